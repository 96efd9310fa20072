#!/usr/bin/env python3
"""Real-world file classes the public corpus lacks, written the way the tools that produce them
write them (run by tests/corpus.rs into the corpus directory, before the pass; deterministic):

- palette PNGs of 1 and 2 bits with a tRNS chunk (Pillow, as optimisers write them), and gray
  PNGs of 1, 2 and 4 bits with a tRNS key;
- a PNG whose image data is one huge IDAT chunk (as pngcrush-style rewriters leave it);
- an old-style JPEG TIFF (compression 6) of one strip without RowsPerStrip, 2x2 subsampled, its
  JPEG stream behind JPEGInterchangeFormat (as early scanners' software wrote it);
- LZW TIFFs in the old "compat" bit order (LSB first, no early change: pre-1991 libtiff);
- CMYK TIFFs: 8-bit LZW, planar, and 16-bit.

Usage: fixtures.py OUT_DIR
"""
import io
import os
import struct
import sys
import zlib

from PIL import Image


def photo(w, h):
    im = Image.new("RGB", (w, h))
    im.putdata([((x * 255) // max(1, w - 1), (y * 255) // max(1, h - 1),
                 ((x + 2 * y) * 255) // max(1, w + 2 * h))
                for y in range(h) for x in range(w)])
    return im


def chunks(png):
    at = 8
    while at < len(png):
        n = struct.unpack(">I", png[at:at + 4])[0]
        yield png[at + 4:at + 8], png[at + 8:at + 8 + n]
        at += 12 + n


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def one_idat(png):
    data = b"".join(body for kind, body in chunks(png) if kind == b"IDAT")
    out = png[:8]
    for kind, body in chunks(png):
        if kind == b"IDAT":
            if data is not None:
                out += chunk(b"IDAT", data)
                data = None
        else:
            out += chunk(kind, body)
    return out


def tiff(width, height, entries, data_blobs, le=True):
    """A classic TIFF: `entries` is [(tag, type, values or ('blob', i))]; blob i of `data_blobs` is
    placed after the directory and its offset written where named."""
    e = "<" if le else ">"
    size = {1: 1, 2: 1, 3: 2, 4: 4, 7: 1}
    fmt = {1: "B", 2: "B", 3: "H", 4: "I", 7: "B"}
    entries = sorted(entries, key=lambda t: t[0])
    ifd_at = 8
    ifd_len = 2 + 12 * len(entries) + 4
    extra_at = ifd_at + ifd_len
    extras = b""
    blob_at = {}
    # Values that do not fit in 4 bytes go after the directory, then the data blobs.
    encoded = []
    for tag, typ, values in entries:
        if isinstance(values, tuple) and values and values[0] == "blob":
            encoded.append((tag, typ, None, [values[1]]))
            continue
        if isinstance(values, tuple) and values and values[0] == "blobs":
            encoded.append((tag, typ, None, values[1]))
            continue
        raw = b"".join(struct.pack(e + fmt[typ], v) for v in values)
        encoded.append((tag, typ, raw, len(values)))
    body = b""
    for tag, typ, raw, count in encoded:
        if raw is not None and len(raw) > 4:
            extras += raw + (b"\0" if len(raw) % 2 else b"")
        elif raw is None and len(count) > 1:
            extras += b"\0" * (4 * len(count))
    data_at = extra_at + len(extras)
    offsets = []
    for blob in data_blobs:
        offsets.append(data_at)
        data_at += len(blob) + (len(blob) % 2)
    extras = b""
    for tag, typ, raw, count in encoded:
        if raw is None:
            # ('blob', i) or ('blobs', [i, ...]): LONG offsets to those blobs.
            at = [offsets[i] for i in count]
            if len(at) == 1:
                body += struct.pack(e + "HHI", tag, 4, 1) + struct.pack(e + "I", at[0])
            else:
                raw = b"".join(struct.pack(e + "I", v) for v in at)
                body += struct.pack(e + "HHI", tag, 4, len(at)) + struct.pack(e + "I", extra_at + len(extras))
                extras += raw
        elif len(raw) > 4:
            body += struct.pack(e + "HHI", tag, typ, count) + struct.pack(e + "I", extra_at + len(extras))
            extras += raw + (b"\0" if len(raw) % 2 else b"")
        else:
            body += struct.pack(e + "HHI", tag, typ, count) + raw.ljust(4, b"\0")
    head = (b"II*\0" if le else b"MM\0*") + struct.pack(e + "I", ifd_at)
    out = head + struct.pack(e + "H", len(entries)) + body + struct.pack(e + "I", 0) + extras
    for blob in data_blobs:
        out += blob + (b"\0" if len(blob) % 2 else b"")
    return out


def lzw_compat(data):
    """LZW as pre-1991 libtiff wrote it: codes LSB first, the code width growing once an entry
    numbered 2^width exists (no early change, as libtiff's LZWDecodeCompat reads it), clear code
    first, end-of-information last."""
    out, acc, nbits = bytearray(), 0, 0
    width = 9

    def put(code):
        nonlocal acc, nbits
        acc |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8

    table = {bytes([i]): i for i in range(256)}
    next_code = 258
    put(256)
    w = b""
    for byte in data:
        wc = w + bytes([byte])
        if wc in table:
            w = wc
            continue
        put(table[w])
        table[wc] = next_code
        next_code += 1
        if next_code == (1 << width) + 1 and width < 12:
            width += 1
        if next_code >= 4093:
            put(256)
            table = {bytes([i]): i for i in range(256)}
            next_code = 258
            width = 9
        w = bytes([byte])
    if w:
        put(table[w])
    put(257)
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def main(out):
    os.makedirs(out, exist_ok=True)
    w, h = 61, 37

    # Palette PNGs of 1 and 2 bits with tRNS.
    for bits, colours in ((1, 2), (2, 4)):
        im = Image.new("P", (w, h))
        im.putpalette([200, 30, 30, 20, 160, 40, 30, 40, 210, 240, 240, 60][: colours * 3])
        im.putdata([(x // 7 + y // 5) % colours for y in range(h) for x in range(w)])
        buf = io.BytesIO()
        im.save(buf, "PNG", bits=bits, transparency=bytes([0, 255, 128, 255][:colours]))
        open(os.path.join(out, f"iiifd-palette{bits}-trns.png"), "wb").write(buf.getvalue())

    # Gray PNGs of 1, 2 and 4 bits with a tRNS key (a valid level of the depth).
    for depth in (1, 2, 4):
        top = (1 << depth) - 1
        rows = []
        for y in range(h):
            bits = "".join(format((x // 3 + y // 2) % (top + 1), f"0{depth}b") for x in range(w))
            bits += "0" * (-len(bits) % 8)
            rows.append(bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)))
        raw = b"".join(b"\0" + r for r in rows)
        data = (b"\x89PNG\r\n\x1a\n"
                + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
                + chunk(b"tRNS", struct.pack(">H", top // 2 + 1 if depth > 1 else 1))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
        open(os.path.join(out, f"iiifd-gray{depth}-trns.png"), "wb").write(data)

    # One huge IDAT (Pillow writes 64 KB chunks): a 700x500 photograph is several.
    buf = io.BytesIO()
    noisy = Image.new("RGB", (700, 500))
    noisy.putdata([((x * 31 + y * 17) % 256, (x * y) % 256, (x ^ y) % 256)
                   for y in range(500) for x in range(700)])
    noisy.save(buf, "PNG", compress_level=1)
    png = buf.getvalue()
    assert sum(1 for k, _ in chunks(png) if k == b"IDAT") > 1
    open(os.path.join(out, "iiifd-one-idat.png"), "wb").write(one_idat(png))

    # Old-style JPEG TIFF: one strip, no RowsPerStrip, YCbCr 2x2, the JFIF stream behind tag 513.
    pic = photo(w, h)
    buf = io.BytesIO()
    pic.save(buf, "JPEG", quality=95, subsampling="4:2:0")
    jpeg = buf.getvalue()
    entries = [
        (256, 3, [w]), (257, 3, [h]), (258, 3, [8, 8, 8]), (259, 3, [6]), (262, 3, [6]),
        (273, 4, ("blob", 0)), (277, 3, [3]), (279, 4, [len(jpeg)]),
        (513, 4, ("blob", 0)), (514, 4, [len(jpeg)]), (530, 3, [2, 2]), (284, 3, [1]),
    ]
    open(os.path.join(out, "iiifd-ojpeg-one-strip.tif"), "wb").write(tiff(w, h, entries, [jpeg]))

    # LZW in the compat bit order, 8-bit RGB and gray, one strip.
    for name, im, photometric, spp in (("rgb", pic, 2, 3), ("gray", pic.convert("L"), 1, 1)):
        data = lzw_compat(im.tobytes())
        entries = [
            (256, 3, [w]), (257, 3, [h]), (258, 3, [8] * spp), (259, 3, [5]), (262, 3, [photometric]),
            (273, 4, ("blob", 0)), (277, 3, [spp]), (278, 3, [h]), (279, 4, [len(data)]), (284, 3, [1]),
        ]
        open(os.path.join(out, f"iiifd-lzw-compat-{name}.tif"), "wb").write(tiff(w, h, entries, [data]))

    # CMYK: 8-bit LZW (Pillow, libtiff), 8-bit planar and 16-bit big-endian, uncompressed.
    cmyk = pic.convert("CMYK")
    cmyk.save(os.path.join(out, "iiifd-cmyk-lzw.tif"), compression="tiff_lzw")
    inks = cmyk.tobytes()
    planes = [inks[i::4] for i in range(4)]
    open(os.path.join(out, "iiifd-cmyk-planar.tif"), "wb").write(tiff(w, h, [
        (256, 3, [w]), (257, 3, [h]), (259, 3, [1]), (262, 3, [5]), (273, 4, ("blobs", [0, 1, 2, 3])),
        (278, 3, [h]), (258, 3, [8] * 4), (277, 3, [4]), (279, 4, [len(p) for p in planes]),
        (284, 3, [2]),
    ], planes))
    base = [(256, 3, [w]), (257, 3, [h]), (259, 3, [1]), (262, 3, [5]), (273, 4, ("blob", 0)),
            (278, 3, [h])]
    deep = b"".join(struct.pack(">H", v * 257) for v in inks)
    open(os.path.join(out, "iiifd-cmyk-16bit.tif"), "wb").write(tiff(w, h, base + [
        (258, 3, [16] * 4), (277, 3, [4]), (279, 4, [len(deep)]), (284, 3, [1]),
    ], [deep], le=False))


if __name__ == "__main__":
    main(sys.argv[1])
