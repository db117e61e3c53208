"""Strip debug info from the compiled libraries of wheels and repack them with a fresh RECORD, for the GPU kit
(a call carries at most 64 MiB: fast-downward's planner goes from 34 MB to ~3 MB).

    python tools/strip_wheels.py SOURCE_DIR TARGET_DIR     # every *.whl of SOURCE_DIR, stripped, into TARGET_DIR
"""

import base64
import hashlib
import pathlib
import subprocess
import sys
import tempfile
import zipfile

source, target = map(pathlib.Path, sys.argv[1:])
for wheel in sorted(source.glob("*.whl")):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        for lib in tmp.rglob("*.so*"):
            if lib.is_file():
                subprocess.run(["strip", "--strip-debug", str(lib)], check=True)
        record = next(tmp.glob("*.dist-info/RECORD"))
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and p != record)
        lines = []
        for path in files:
            data = path.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{path.relative_to(tmp).as_posix()},sha256={digest},{len(data)}")
        lines.append(f"{record.relative_to(tmp).as_posix()},,")
        record.write_text("\n".join(lines) + "\n")
        out = target / wheel.name
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for path in files + [record]:
                zf.write(path, path.relative_to(tmp).as_posix())
        print(f"{wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB -> {out.stat().st_size / 1e6:.1f} MB")
