#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# scripts/readme-snippets on a sample README in a temporary directory: fills a whole-file and a line-range snippet,
# leaves markers inside ``` fences alone, --check passes when fresh and fails (exit 1, file untouched) after an
# example changes; a missing file or an unclosed marker is exit 2.
# Usage: test_readme_snippets.py SCRIPT
import os
import shutil
import subprocess
import sys
import tempfile

from support import check, limit_runtime, main

README = """# sample
<!-- snippet: examples/a.cpp -->
stale text
<!-- /snippet -->
middle
<!-- snippet: examples/a.cpp:2-3 -->
<!-- /snippet -->
```text
<!-- snippet: examples/missing.cpp -->
```
end
"""

EXPECTED = """# sample
<!-- snippet: examples/a.cpp -->
```cpp
// line 1
int two = 2;
int three = 3;
```
<!-- /snippet -->
middle
<!-- snippet: examples/a.cpp:2-3 -->
```cpp
int two = 2;
int three = 3;
```
<!-- /snippet -->
```text
<!-- snippet: examples/missing.cpp -->
```
end
"""


def test():
    limit_runtime(30)
    script = sys.argv[1]
    root = tempfile.mkdtemp(prefix="coport-snippets-")
    try:
        os.mkdir(os.path.join(root, "examples"))
        example = os.path.join(root, "examples", "a.cpp")
        readme = os.path.join(root, "README.md")

        def write(path, text):
            with open(path, "w") as f:
                f.write(text)

        def read(path):
            with open(path) as f:
                return f.read()

        def run(*args):
            return subprocess.run([sys.executable, script, "--root", root, *args], capture_output=True, timeout=20).returncode

        write(example, "// line 1\nint two = 2;\nint three = 3;\n")
        write(readme, README)
        check(run("--check") == 1, "--check on a stale README: exit 1")
        check(read(readme) == README, "--check wrote nothing")
        check(run() == 0 and read(readme) == EXPECTED, "rewrite fills both snippets, fenced marker untouched")
        check(run("--check") == 0, "--check on the fresh README: exit 0")
        write(example, "// line 1\nint two = 22;\nint three = 3;\n")
        check(run("--check") == 1, "--check after the example changed: exit 1")
        check(run() == 0 and "int two = 22;" in read(readme), "rewrite picks up the change")
        write(readme, "<!-- snippet: examples/a.cpp:3-9 -->\n<!-- /snippet -->\n")
        check(run() == 2, "a line range past the end: exit 2")
        write(readme, "<!-- snippet: examples/a.cpp -->\n")
        check(run() == 2, "an unclosed marker: exit 2")
        other = os.path.join(root, "OTHER.md")
        write(other, "<!-- snippet: examples/nope.cpp -->\n<!-- /snippet -->\n")
        check(run("--readme", other) == 2, "--readme with a missing example file: exit 2")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(test))
