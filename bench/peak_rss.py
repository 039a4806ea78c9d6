"""Run a module or script in this process and print its peak resident memory when it ends.

    python bench/peak_rss.py -m monai.bundle run ...   |   python bench/peak_rss.py script.py args...   |   ... -c 'code'

Prints ``PEAK_RSS_KIB <n>`` on stderr and exits with the command's exit code. The peak is VmHWM from
/proc/self/status (falling back to ru_maxrss): on Linux ru_maxrss survives fork + exec, so a child of a big
process would report its parent's size.
"""

import os
import resource
import runpy
import sys


def peak_kib() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> int:
    args = sys.argv[1:]
    code = 0
    try:
        if args[0] == "-m":
            sys.path[0] = os.getcwd()  # as ``python -m`` does (a script run puts its own folder there instead)
            sys.argv = args[1:]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        elif args[0] == "-c":
            sys.path[0] = os.getcwd()
            sys.argv = ["-c", *args[2:]]
            exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = args
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if exit_.code not in (None, 0) and not isinstance(exit_.code, int):
            print(exit_.code, file=sys.stderr)
    print("PEAK_RSS_KIB", peak_kib(), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
