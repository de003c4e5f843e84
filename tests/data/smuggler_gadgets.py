# ruff: noqa: UP031  (the loops are smuggler's, as written there)
"""The Transfer-Encoding mutations ("gadgets") of smuggler, as test data for tests/test_smuggling.py.

From https://github.com/defparam/smuggler (Evan Custodio), commit
2be871e6151ce85167a277fab21c74c851d8b20b (its configs/ unchanged since b3516c3, the initial
check-in): configs/default.py, configs/doubles.py and configs/exhaustive.py, each a dict here
with the same names and the same loops. Each gadget is one header line (without its CRLF) that
smuggler puts in a request, after the request line, next to a Content-Length. MIT License,
Copyright (c) 2020 Evan Custodio (the notice is in the project's LICENSE file and at the top of
its smuggler.py).

smuggler sends its payloads as ``str(payload).encode()``: the characters from U+0080 to U+00FF
go out as two UTF-8 bytes. The tests send each gadget both ways (Latin-1: the one byte it names).
"""

from __future__ import annotations

# configs/default.py
DEFAULT: dict[str, str] = {
    "nameprefix1": " Transfer-Encoding: chunked",
    "tabprefix1": "Transfer-Encoding:\tchunked",
    "tabprefix2": "Transfer-Encoding\t:\tchunked",
    "space1": "Transfer-Encoding : chunked",
}
for i in [0x1, 0x4, 0x8, 0x9, 0xA, 0xB, 0xC, 0xD, 0x1F, 0x20, 0x7F, 0xA0, 0xFF]:
    DEFAULT["midspace-%02x" % i] = "Transfer-Encoding:%cchunked" % i
    DEFAULT["postspace-%02x" % i] = "Transfer-Encoding%c: chunked" % i
    DEFAULT["prespace-%02x" % i] = "%cTransfer-Encoding: chunked" % i
    DEFAULT["endspace-%02x" % i] = "Transfer-Encoding: chunked%c" % i
    DEFAULT["xprespace-%02x" % i] = "X: X%cTransfer-Encoding: chunked" % i
    DEFAULT["endspacex-%02x" % i] = "Transfer-Encoding: chunked%cX: X" % i
    DEFAULT["rxprespace-%02x" % i] = "X: X\r%cTransfer-Encoding: chunked" % i
    DEFAULT["xnprespace-%02x" % i] = "X: X%c\nTransfer-Encoding: chunked" % i
    DEFAULT["endspacerx-%02x" % i] = "Transfer-Encoding: chunked\r%cX: X" % i
    DEFAULT["endspacexn-%02x" % i] = "Transfer-Encoding: chunked%c\nX: X" % i

# configs/doubles.py
DOUBLES: dict[str, str] = {}
for i in [*range(0x1, 0x21), *range(0x7F, 0x100)]:
    DOUBLES["%02x-%02x-XX-XX" % (i, i)] = "%cTransfer-Encoding%c: chunked" % (i, i)
    DOUBLES["%02x-XX-%02x-XX" % (i, i)] = "%cTransfer-Encoding:%cchunked" % (i, i)
    DOUBLES["%02x-XX-XX-%02x" % (i, i)] = "%cTransfer-Encoding: chunked%c" % (i, i)
    DOUBLES["XX-%02x-%02x-XX" % (i, i)] = "Transfer-Encoding%c:%cchunked" % (i, i)
    DOUBLES["XX-%02x-XX-%02x" % (i, i)] = "Transfer-Encoding%c: chunked%c" % (i, i)
    DOUBLES["XX-XX-%02x-%02x" % (i, i)] = "Transfer-Encoding:%cchunked%c" % (i, i)

# configs/exhaustive.py
EXHAUSTIVE: dict[str, str] = {
    "nameprefix1": " Transfer-Encoding: chunked",
    "tabprefix1": "Transfer-Encoding:\tchunked",
    "tabprefix2": "Transfer-Encoding\t:\tchunked",
    "spacejoin1": "Transfer Encoding: chunked",
    "underjoin1": "Transfer_Encoding: chunked",
    "smashed": "Transfer Encoding:chunked",
    "space1": "Transfer-Encoding : chunked",
    "valueprefix1": "Transfer-Encoding:  chunked",
    "vertprefix1": "Transfer-Encoding:\u000bchunked",
    "commaCow": "Transfer-Encoding: chunked, cow",
    "cowComma": "Transfer-Encoding: cow, chunked",
    "contentEnc": "Content-Encoding: chunked",
    "linewrapped1": "Transfer-Encoding:\n chunked",
    "quoted": 'Transfer-Encoding: "chunked"',
    "aposed": "Transfer-Encoding: 'chunked'",
    "lazygrep": "Transfer-Encoding: chunk",
    "sarcasm": "TrAnSFer-EnCODinG: cHuNkeD",
    "yelling": "TRANSFER-ENCODING: CHUNKED",
    "0dsuffix": "Transfer-Encoding: chunked\r",
    "tabsuffix": "Transfer-Encoding: chunked\t",
    "revdualchunk": "Transfer-Encoding: cow\r\nTransfer-Encoding: chunked",
    "0dspam": "Transfer\r-Encoding: chunked",
    "nested": "Transfer-Encoding: cow chunked bar",
    "spaceFF": "Transfer-Encoding:\xffchunked",
    "accentCH": "Transfer-Encoding: ch\x96nked",
    "accentTE": "Transf\x82r-Encoding: chunked",
    "x-rout": "X:X\rTransfer-Encoding: chunked",
    "x-nout": "X:X\nTransfer-Encoding: chunked",
}
for i in [*range(0x1, 0x20), *range(0x7F, 0x100)]:
    EXHAUSTIVE["midspace-%02x" % i] = "Transfer-Encoding:%cchunked" % i
    EXHAUSTIVE["postspace-%02x" % i] = "Transfer-Encoding%c: chunked" % i
    EXHAUSTIVE["prespace-%02x" % i] = "%cTransfer-Encoding: chunked" % i
    EXHAUSTIVE["endspace-%02x" % i] = "Transfer-Encoding: chunked%c" % i

CONFIGS: dict[str, dict[str, str]] = {
    "default": DEFAULT,
    "doubles": DOUBLES,
    "exhaustive": EXHAUSTIVE,
}
