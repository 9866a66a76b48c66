"""Starting worker processes: `local.py` (torch's elastic agent, torchrun semantics), and `env.py`
(who am I: rank, world size, rendezvous address) for workers however they were started."""
