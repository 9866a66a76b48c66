#!/usr/bin/env bash
# The GPU check of issue 15, on one CUDA GPU, in under 8 minutes:
#
#   bash scripts/gpu_check.sh          # one GPU: the figures (each step also writes outputs/gpu_check/*.txt)
#   bash scripts/gpu_check.sh --cpu    # a dry run of every step on CPU: tiny shapes, no compile, few steps
#
#   1. tokens/s of trainkit (bf16-mixed and 16-mixed, trainer.compile=true) against a hand-written
#      bf16 torch loop, on the tiny GPT recipe's model at its 86M override set (target ratio >= 0.97)
#   2. `trainkit fit experiment=tiny_gpt` at that set, compiled, on synthetic text: the throughput
#      and MFU columns metrics.csv logs (whatever of them this version logs)
#   3. checkpoint save / load time and the training step's stall, sync and async (the 162M GPT)
#   4. the exact-resume tests (kill -9 mid-epoch, resume, compare bit for bit), on CUDA
#   5. a mid-epoch resume at batch 10,000 of a 20,000-batch epoch (CPU-bound: data work only)
#   6. tokens/s of the llm_finetune recipe (a random GPT-2-small-sized model, full and LoRA, bf16-mixed)
#      against a hand-written loop over the same transformers model
#
# Each step has a time limit (caps, not estimates: the steps together are expected well under 8
# minutes, the caps add up to about 10); a step that fails or runs out is
# reported and the next one runs. The exit status is the number of steps that did not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-outputs/gpu_check}"
mkdir -p "$OUT"

SCALE=1  # the time limits' multiplier
if [[ "${1:-}" == "--cpu" ]]; then
    DEVICE=cpu
    SCALE=6  # a small shared CPU is slow, even on tiny shapes
    THROUGHPUT=(--device cpu --shape tiny --steps 4 --warmup 2 --batch-size 4 --no-compile)
    SHAPE=(model.num_layers=2 model.hidden_size=64 model.num_heads=2 model.block_size=64 trainer.accelerator=cpu
           trainer.max_steps=6 trainer.log_every_n_steps=2)
    CKPT=(--device cpu --skip-gpt --repeats 1)
    RESUME_TESTS="sigkill and bf16"
    RESUME=(--batches 400 --at 200)
    LLM=(--device cpu --layers 2 --width 64 --block-size 64 --batch-size 4 --steps 4 --warmup 1 --rounds 1)
else
    DEVICE=cuda
    THROUGHPUT=(--device cuda --shape 86m --steps 100 --warmup 15 --batch-size 16)
    SHAPE=(model.num_layers=12 model.hidden_size=768 model.num_heads=12 model.block_size=1024 model.dropout=0.1
           trainer.accelerator=gpu trainer.compile=true trainer.max_steps=80 trainer.log_every_n_steps=10)
    CKPT=(--device cuda --skip-dkt --repeats 3)
    RESUME_TESTS="sigkill"
    RESUME=()
    LLM=(--device cuda --precision bf16-mixed --layers 12 --width 768 --block-size 512 --steps 40 --warmup 5 --rounds 2)
fi
FAILED=0

step() {  # step <name> <seconds> <command...>
    local name=$1 limit=$(($2 * SCALE))
    shift 2
    echo
    echo "== $name (limit ${limit} s; ${SECONDS} s so far)"
    timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local status=${PIPESTATUS[0]}
    if [[ $status -ne 0 ]]; then
        echo "== $name: FAILED (exit $status$([[ $status -eq 124 ]] && echo ', out of time'))"
        FAILED=$((FAILED + 1))
    fi
}

python - "$DEVICE" <<'EOF' || exit 1
import sys, torch
if sys.argv[1] == "cuda":
    assert torch.cuda.is_available(), "no CUDA device: run with --cpu for a dry run"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
else:
    print(f"torch {torch.__version__}, CPU dry run")
EOF

step throughput 170 python scripts/gpu_throughput.py "${THROUGHPUT[@]}" --root "$OUT/throughput_runs"

# Synthetic text (random words, 3 MB): the tokens/s and MFU do not depend on what the bytes say.
CORPUS="$OUT/corpus"
python - "$CORPUS" <<'EOF'
import pathlib, random, sys
folder = pathlib.Path(sys.argv[1]); folder.mkdir(parents=True, exist_ok=True)
rng = random.Random(0)
words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
(folder / "book.txt").write_text(" ".join(rng.choice(words) for _ in range(500_000)))
EOF
fit_and_show() {
    rm -rf "$OUT/fit"
    # shellcheck disable=SC2086  # (the overrides hold no spaces)
    python -m trainkit fit experiment=tiny_gpt $SHAPE_OVERRIDES precision=bf16-mixed "datamodule.path=$CORPUS" \
        optimizer.lr=6e-4 'optimizer.betas=[0.9,0.95]' scheduler.warmup_steps=10 trainer.val_check_interval=250 \
        callbacks=none trainer.resume=none "hydra.run.dir=$OUT/fit" || return 1
    python - "$OUT/fit/metrics.csv" <<'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r.get("train/loss")]
wanted = [k for k in rows[-1] if any(w in k.lower() for w in ("mfu", "flop", "token", "sample", "step_time", "steps_per"))]
print("metrics.csv columns:", ", ".join(rows[-1]))
if not wanted:
    print("this version logs no throughput or MFU column (the throughput callback has not landed)")
for r in rows[-3:]:
    print(f"step {r['step']}: " + ", ".join(f"{k}={r[k]}" for k in ["train/loss", *wanted] if r.get(k)))
EOF
}
export -f fit_and_show
export OUT CORPUS SHAPE_OVERRIDES="${SHAPE[*]}"
step fit_mfu 110 bash -c fit_and_show

step checkpoint 80 python scripts/bench_checkpoint.py "${CKPT[@]}"

step exact_resume 110 python -m pytest -x -q tests/integration/test_resume.py -k "$RESUME_TESTS"

step resume_bench 60 python scripts/bench_resume.py "${RESUME[@]}"

# llm_finetune against a hand-written loop over the same transformers model: full fine-tuning, then LoRA
step llm_finetune 90 bash -c 'python scripts/bench_llm_finetune.py "$@" --lora-r 0 && python scripts/bench_llm_finetune.py "$@"' _ "${LLM[@]}"

echo
echo "== done in ${SECONDS} s; steps not passed: $FAILED (outputs in $OUT)"
exit "$FAILED"
