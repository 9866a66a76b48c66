"""trainkit.frozen_imports: start-up's imports without the collector's walks, then frozen."""
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import gc, sys
    from trainkit.frozen_imports import import_frozen
    collections = []
    gc.callbacks.append(lambda phase, info: collections.append(info["generation"]) if phase == "start" else None)
    if sys.argv[1] == "off":
        gc.disable()
    import_frozen(["decimal", "email.message", "xml.dom.minidom"])  # stdlib modules this probe had not imported
    assert "decimal" in sys.modules and not collections, collections
    assert gc.get_freeze_count() > 1000  # what was alive, modules and all, is out of later walks
    assert gc.isenabled() == (sys.argv[1] == "on")  # as it was before
    try:
        import_frozen(["no_such_module_here"])
    except ModuleNotFoundError:
        assert gc.isenabled() == (sys.argv[1] == "on")
    else:
        raise AssertionError("a failed import must raise")
    print("ok")
""")


def test_imports_run_without_a_collection_and_leave_the_collector_as_it_was():
    for state in ("on", "off"):
        result = subprocess.run([sys.executable, "-c", PROBE, state], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
