#!/usr/bin/env bash
# Rebuilds the embedded corpus data/corpus/train-00000.h5 and data/corpus/val-00000.h5 (byte tokenizer) from two
# public-domain English texts in Debian main: The Jargon File 4.4.7 (package jargon-text) and Ambrose Bierce's
# The Devil's Dictionary (package dict-devil). See SOURCE.md for versions, licences and checksums.
#
# Needs: apt-get with package lists (run `apt-get update` once), dpkg-deb, zcat, awk, sha256sum, and build/tokenize
# (run `make` first). Usage: data/corpus/make_corpus.sh [OUT_DIR]   (default: data/corpus)
#   KEEP_TEXT=DIR  also leave the extracted texts and corpus.txt in DIR (e.g. for benchmarks)
#   ALLOW_CHANGED=1  go on when the package texts differ from the checksums in SOURCE.md
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/data/corpus}
TOKENIZE=$ROOT/build/tokenize
[ -x "$TOKENIZE" ] || { echo "make_corpus.sh: $TOKENIZE not found: run make first" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

apt-get download jargon-text dict-devil >/dev/null 2>&1 || {
    echo "make_corpus.sh: apt-get download jargon-text dict-devil failed (run apt-get update first?)" >&2; exit 1; }
for deb in jargon-text_*.deb dict-devil_*.deb; do dpkg-deb -x "$deb" x; done
zcat x/usr/share/doc/jargon-text/jargon.txt.gz > jargon.txt
zcat x/usr/share/dictd/devil.dict.dz > devil.txt     # dictzip is gzip-compatible

check() {
    local got; got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$got" != "$2" ]; then
        echo "make_corpus.sh: $1 has sha256 $got, SOURCE.md records $2 (a newer Debian package?)" >&2
        [ "${ALLOW_CHANGED:-0}" = 1 ] || exit 1
    fi
}
check jargon.txt 40dfb4b98191a670a09a183d5798d50f243d23fdbd1495dcc0aca2ce5895ba97
check devil.txt 703d1225d2fb927653bfd8b00e4e96938e0b630c6023edd26702ac6ed50383f8

# Documents: one per Jargon File entry (":name:" headers) or unindented heading (chapters, appendices), one per
# Devil's Dictionary entry (an unindented paragraph starting with an upper-case word). Runs of five or more
# one-line, unpunctuated paragraphs are tables of contents and letter indexes: dropped. Paragraphs are joined by one
# blank line, documents separated by three, which `build/tokenize --blank-lines 3` splits on.
split_docs() {   # $1: jargon | devil
    LC_ALL=C awk -v mode="$1" '
    function emit(s) { if (out_started) printf "\n\n\n\n"; printf "%s", s; out_started = 1 }
    function add_par(p, starts_doc) {
        if (starts_doc && doc != "") { emit(doc); doc = "" }
        doc = doc (doc == "" ? "" : "\n\n") p
    }
    function flush_list(   i) {
        if (n_list < 5) for (i = 1; i <= n_list; i++) add_par(list[i], list_new[i])
        n_list = 0
    }
    function end_par(   first, listy, starts_doc) {
        if (n_lines == 0) return
        first = lines[1]
        if (mode == "jargon") starts_doc = (first ~ /^:[^ ].*:/) || raw_first !~ /^ /
        else starts_doc = raw_first ~ /^[A-Z][A-Z]/
        listy = n_lines == 1 && first !~ /^:/ && length(first) <= 60 && split(first, w, " ") <= 8 && first !~ /[.!?;:"]$/
        if (listy) { n_list++; list[n_list] = par; list_new[n_list] = starts_doc }
        else { flush_list(); add_par(par, starts_doc) }
        n_lines = 0; par = ""
    }
    mode == "devil" && NR < 15 { next }                       # dictfmt headers before the book
    mode == "devil" && /^ abcdefghijklmnopqrstuvwxyz$/ { next } # dictfmt alphabet entry
    /^[ \t\r]*$/ { end_par(); next }
    {
        line = $0
        if (mode == "jargon") sub(/^   /, "", line)
        if (n_lines == 0) raw_first = $0
        lines[++n_lines] = line
        par = par (n_lines > 1 ? "\n" : "") line
    }
    END { end_par(); flush_list(); if (doc != "") emit(doc); printf "\n" }
    ' "$1.txt"
}
{ split_docs jargon; printf "\n\n\n"; split_docs devil; } > corpus.txt
check corpus.txt 28470ea9a42a6649783e422cf251f7b00e5fae0cfe61551276ea9651ec169aeb
if [ -n "${KEEP_TEXT:-}" ]; then mkdir -p "$KEEP_TEXT"; cp jargon.txt devil.txt corpus.txt "$KEEP_TEXT"/; fi

mkdir -p "$OUT"
"$TOKENIZE" --tokenizer byte --format text --blank-lines 3 --val-fraction 0.05 --shard-tokens 100000000 \
    --out-dir "$OUT" --prefix train --val-prefix val --force corpus.txt
