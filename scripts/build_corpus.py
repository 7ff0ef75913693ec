#!/usr/bin/env python3
"""Build orlik's Polish corpus from extracted Debian packages (stdlib only).

Usage: build_corpus.py EXTRACTED_ROOT OUT_DIR PKG=VERSION...

Sources: manpages-pl / manpages-pl-dev (rendered with groff), libreoffice-help-pl (HTML),
gnome-user-docs (help/pl Mallard pages), fortunes-pl. Text is split into paragraphs, kept when it
looks Polish, exact duplicates dropped, then split deterministically by paragraph hash into
train.txt (~95%) and valid.txt (~5%), paragraphs separated by blank lines; valid-small.txt is
the first ~100 KB of valid.txt. manifest.json records
sources, licences, counts, bytes and sha256 of the outputs.
"""
import concurrent.futures as cf
import gzip
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

PL_DIACRITICS = set("ąćęłńóśźżĄĆĘŁŃÓŚŹŻ")
PL_WORDS = set("i w na się jest nie z do że to jak lub oraz aby przez dla jeśli można są być od po ze co".split())
EN_WORDS = set("the and of is to in that for with this are be by or it as on".split())


def polish(p):
    if len(p) < 40:
        return False
    letters = sum(c.isalpha() for c in p)
    if letters < 0.6 * len(p):
        return False
    words = re.findall(r"\w+", p.lower())
    pl = sum(w in PL_WORDS for w in words)
    en = sum(w in EN_WORDS for w in words)
    has_diacritic = any(c in PL_DIACRITICS for c in p)
    return (has_diacritic or pl >= 2) and en <= pl


def norm(p):
    return re.sub(r"\s+", " ", p).strip()


def render_man(path):
    try:
        raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
        out = subprocess.run(
            ["groff", "-k", "-Tutf8", "-mandoc", "-rHY=0", "-rLL=2000n", "-dAD=l", "-P", "-cbou"],
            input=raw, capture_output=True, timeout=60, env={**os.environ, "MANWIDTH": "200"},
        ).stdout.decode("utf-8", "replace")
    except Exception:
        return []
    paras, cur = [], []
    for line in out.splitlines():
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    # drop the page header/footer lines (first and last paragraph)
    return paras[1:-1]


class HtmlText(html.parser.HTMLParser):
    BLOCK = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td", "div", "br", "tr"}

    def __init__(self):
        super().__init__()
        self.paras, self.cur, self.skip = [], [], 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "header", "nav", "noscript"):
            self.skip += 1
        if tag in self.BLOCK:
            self.flush()

    def handle_endtag(self, tag):
        if tag in ("script", "style", "header", "nav", "noscript"):
            self.skip = max(0, self.skip - 1)
        if tag in self.BLOCK:
            self.flush()

    def handle_data(self, data):
        if not self.skip:
            self.cur.append(data)

    def flush(self):
        t = norm("".join(self.cur))
        if t:
            self.paras.append(t)
        self.cur = []


def html_paras(path):
    p = HtmlText()
    try:
        p.feed(open(path, encoding="utf-8", errors="replace").read())
    except Exception:
        return []
    p.flush()
    return p.paras


def mallard_paras(path):
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return []
    out = []
    for el in root.iter():
        tag = el.tag.split("}")[-1]
        if tag in ("p", "title", "desc"):
            out.append(norm("".join(el.itertext())))
    return out


def fortune_paras(path):
    try:
        text = open(path, "rb").read().decode("utf-8")
    except UnicodeDecodeError:
        text = open(path, "rb").read().decode("iso-8859-2", "replace")
    return [norm(x) for x in re.split(r"^%\s*$", text, flags=re.M)]


def main():
    root, out_dir, pkgs = sys.argv[1], sys.argv[2], sys.argv[3:]
    licences = {
        "manpages-pl": "GPL-3+ (see usr/share/doc/manpages-pl/copyright)",
        "manpages-pl-dev": "GPL-3+ (see usr/share/doc/manpages-pl-dev/copyright)",
        "libreoffice-help-pl": "MPL-2.0 (see usr/share/doc/libreoffice-help-pl/copyright)",
        "gnome-user-docs": "CC-BY-SA-3.0 (see usr/share/doc/gnome-user-docs/copyright)",
        "fortunes-pl": "GPL-2+ (see usr/share/doc/fortunes-pl/copyright)",
    }
    jobs = []  # (source, kind, path)
    man = os.path.join(root, "usr/share/man/pl")
    for d, _, fs in sorted(os.walk(man)):
        for f in sorted(fs):
            src = "manpages-pl-dev" if re.search(r"/man[23]$", d) else "manpages-pl"
            jobs.append((src, "man", os.path.join(d, f)))
    lo = os.path.join(root, "usr/share/libreoffice/help/pl")
    for d, _, fs in sorted(os.walk(lo)):
        jobs += [("libreoffice-help-pl", "html", os.path.join(d, f)) for f in sorted(fs) if f.endswith(".html")]
    gh = os.path.join(root, "usr/share/help/pl")
    for d, _, fs in sorted(os.walk(gh)):
        jobs += [("gnome-user-docs", "page", os.path.join(d, f)) for f in sorted(fs) if f.endswith(".page")]
    fo = os.path.join(root, "usr/share/games/fortunes/pl")
    if os.path.isdir(fo):
        for f in sorted(os.listdir(fo)):
            p = os.path.join(fo, f)
            if os.path.isfile(p) and not f.endswith((".dat", ".u8")) and not os.path.islink(p):
                jobs.append(("fortunes-pl", "fortune", p))
    fn = {"man": render_man, "html": html_paras, "page": mallard_paras, "fortune": fortune_paras}
    with cf.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        results = list(ex.map(lambda j: fn[j[1]](j[2]), jobs))
    seen, train, valid = set(), [], []
    stats = {}
    for (src, _, _), paras in zip(jobs, results):
        s = stats.setdefault(src, {"files": 0, "paragraphs": 0, "bytes": 0})
        s["files"] += 1
        for p in paras:
            p = norm(p)
            if not polish(p) or p in seen:
                continue
            seen.add(p)
            s["paragraphs"] += 1
            s["bytes"] += len(p.encode())
            h = int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)
            (valid if h % 20 == 0 else train).append(p)
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for name, paras in (("train.txt", train), ("valid.txt", valid)):
        data = ("\n\n".join(paras) + "\n").encode()
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
        files[name] = {"paragraphs": len(paras), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # A fixed ~100 KB prefix of the validation set for quick checks (whole paragraphs).
    small, size = [], 0
    for p in valid:
        if size + len(p.encode()) > 100_000:
            break
        small.append(p)
        size += len(p.encode()) + 2
    data = ("\n\n".join(small) + "\n").encode()
    with open(os.path.join(out_dir, "valid-small.txt"), "wb") as f:
        f.write(data)
    files["valid-small.txt"] = {"paragraphs": len(small), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    versions = dict(p.split("=", 1) for p in pkgs)
    manifest = {
        "format": 1,
        "description": "Polish paragraphs from Debian packages, filtered, deduplicated, split by sha256(paragraph) % 20 == 0 -> valid",
        "sources": {k: {**v, "package_version": versions.get(k), "licence": licences.get(k)} for k, v in stats.items()},
        "files": files,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
    print(json.dumps(files))


if __name__ == "__main__":
    main()
