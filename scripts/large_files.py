"""Write large_files.yml (model-zoo manifest) for the weights in models/: path, release URL placeholder, sha256.

    python -m scripts.large_files [--bundle_root .] [--url_base URL]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from scripts.atomic import atomic_write_text

WEIGHTS = ("model.pt", "coarse_model.pt", "model.ts")
URL_PLACEHOLDER = "https://github.com/OWNER/REPO/releases/download/v{version}/{name}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(bundle_root: Path, version: str, url_base: str = URL_PLACEHOLDER) -> str:
    lines = ["large_files:"]
    for name in WEIGHTS:
        path = bundle_root / "models" / name
        if path.exists():
            lines += [
                f'  - path: "models/{name}"',
                f'    url: "{url_base.format(version=version, name=name)}"',
                f'    hash_val: "{sha256_of(path)}"',
                '    hash_type: "sha256"',
            ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle_root", default=".")
    parser.add_argument("--url_base", default=URL_PLACEHOLDER, help="release URL with {version} and {name}")
    args = parser.parse_args(argv)
    import json

    root = Path(args.bundle_root)
    version = json.loads((root / "configs" / "metadata.json").read_text())["version"]
    atomic_write_text(root / "large_files.yml", manifest(root, version, args.url_base))
    print((root / "large_files.yml").read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
