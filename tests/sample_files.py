"""Small real input files made at test time: a PDF written by hand (text per page), HTML,
Markdown, reST and CSV samples with known sections."""

from __future__ import annotations


def _pdf_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[str]) -> bytes:
    """A valid PDF 1.4 whose page i shows pages[i] (lines split at newlines) in Helvetica."""
    n = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        shown = " ".join(f"({_pdf_text(line)}) Tj T*" for line in text.split("\n"))
        stream = f"BT /F1 12 Tf 72 720 Td 14 TL {shown} ET".encode()
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font "
            f"<< /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = b"%PDF-1.4\n"
    offsets = []
    for i, obj in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


HTML = """<!doctype html><html><head><title>Tea Guide</title>
<style>body { color: red }</style><script>track("visit")</script></head>
<body><nav><a href="/">Home</a> | <a href="/shop">Shop</a></nav>
<header>Site banner</header>
<main><h1>Tea</h1><p>Tea is an aromatic beverage made from cured leaves.</p>
<h2>Green tea</h2><p>Green tea leaves are steamed or pan-fired to stop oxidation.</p>
<h2>Black tea</h2><p>Black tea is fully oxidized, which gives it a stronger flavour.</p>
<h3>Assam</h3><p>Assam black tea grows in the lowlands of north-east India.</p></main>
<footer>Copyright notice</footer></body></html>"""

MARKDOWN = """# Sailing

Sailing uses wind acting on sails to propel a boat.

## Knots

A bowline makes a fixed loop at the end of a rope.

```
# this line is code, not a heading
```

## Navigation

Charts and a compass tell a sailor where the boat is.
"""

RST = """=========
Astronomy
=========

Astronomy studies celestial objects.

Planets
=======

Jupiter is the largest planet of the solar system.

Moons
-----

Europa is an icy moon of Jupiter.
"""
