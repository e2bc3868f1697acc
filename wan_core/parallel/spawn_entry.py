"""The file a worker process runs first: the pack root on sys.path, then `wan_core.parallel.worker.main`.

The pool starts workers with torch.multiprocessing (spawn) and `runpy.run_path(<this file>, init_globals=
{"WANMOE_WORKER": config}, run_name=RUN_NAME)` as the target, so the child imports `wan_core` as a top-level
package: inside ComfyUI rank 0 knows the pack under a path-like module name that no other process can import.
Importing this module does nothing.
"""

RUN_NAME = "__wanmoe_worker__"

if __name__ == RUN_NAME:
    import sys
    from pathlib import Path

    _root = str(Path(__file__).resolve().parents[2])
    if _root not in sys.path:
        sys.path.insert(0, _root)
    from wan_core.parallel.worker import main

    main(globals()["WANMOE_WORKER"])
