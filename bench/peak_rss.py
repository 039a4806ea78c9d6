"""Run a module or script in this process and print its peak resident memory when it ends.

    python bench/peak_rss.py -m monai.bundle run ...      |      python bench/peak_rss.py script.py args...

Prints ``PEAK_RSS_KIB <n>`` (ru_maxrss) on stderr and exits with the command's exit code.
"""

import resource
import runpy
import sys


def main() -> int:
    args = sys.argv[1:]
    code = 0
    try:
        if args[0] == "-m":
            sys.argv = args[1:]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = args
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if exit_.code not in (None, 0) and not isinstance(exit_.code, int):
            print(exit_.code, file=sys.stderr)
    print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
