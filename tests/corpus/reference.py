#!/usr/bin/env python3
"""The real-world corpus pass (run by tests/corpus.rs): every file of the corpus asked of a running
iiifd, its pixels compared with Pillow's decode of the same file.

For each file: info.json, `full/max/0/default.png` (lossless, so pixels can be compared) and a
`^!64,64` jpg thumbnail. The reference is Pillow's first frame, normalised as iiifd documents it:
EXIF/TIFF orientation applied (from EXIF, not XMP, as browsers); a low-bit gray PNG's tRNS key
applied at its level, as browsers do; an embedded RGB, gray or CMYK ICC profile converted to sRGB (lcms2,
Pillow's ImageCms); samples deeper than 8 bits scaled from their full range (signed: shifted by
half the range; float: 0.0..1.0); then RGBA. Colour under a transparent pixel is not compared
(both sides premultiplied).

Prints one JSON object: per file its statuses and, when both decoded, the mean and the share of
large differences; then totals.
"""
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageCms, ImageOps

Image.MAX_IMAGE_PIXELS = None

SRGB = ImageCms.createProfile("sRGB")


def deep_to_8bit(im, path, tags):
    """Deep samples as 8-bit L, scaled from their full range: the depth and signedness from the
    TIFF tags (BitsPerSample, SampleFormat); other formats (PNG, JPEG 2000) Pillow hands on
    already scaled to 16 bits."""
    if tags is not None:
        bits = tags.get(258, (8,))
        bits = bits[0] if isinstance(bits, tuple) else bits
        fmt = tags.get(339, (1,))
        fmt = fmt[0] if isinstance(fmt, tuple) else fmt
    else:
        bits, fmt = 16, 1
    top = float((1 << bits) - 1)
    values = list(im.getdata())
    if im.mode == "F" or fmt == 3:
        mapped = [0 if v != v else round(min(1.0, max(0.0, v)) * 255) for v in values]
    else:
        if fmt == 2 and im.mode != "I;16S" and im.mode != "I" and bits <= 16:
            # Pillow hands some signed depths on as their unsigned bit patterns.
            values = [v - (1 << bits) if v >= (1 << (bits - 1)) else v for v in values]
        offset = float(1 << (bits - 1)) if fmt == 2 else 0.0
        mapped = [round(min(top, max(0.0, v + offset)) * 255.0 / top) for v in values]
    out = Image.new("L", im.size)
    out.putdata(mapped)
    return out


def signed_8bit(im):
    """8-bit signed TIFF samples (Pillow shows their bit patterns) shifted by half the range."""
    return im.point(lambda v: v ^ 0x80)


def reference(path):
    im = Image.open(path)
    im.load()
    # The TIFF tags, before exif_transpose returns a copy without them.
    tags = getattr(im, "tag_v2", None)
    # Orientation from EXIF only, as browsers take it: Pillow also reads it from XMP and from
    # ImageMagick's text chunks in PNG, which no browser does.
    if not path.lower().endswith(".png") or b"eXIf" in open(path, "rb").read():
        im = ImageOps.exif_transpose(im)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16S", "I;16BS", "I;16N", "I", "F", "I;32", "I;32S"):
        key = im.info.get("transparency")
        mask = None
        if isinstance(key, int):
            # A 16-bit PNG's tRNS colour: those pixels are transparent.
            mask = Image.new("L", im.size)
            mask.putdata([0 if v == key else 255 for v in im.getdata()])
        im = deep_to_8bit(im, path, tags)
        if mask is not None:
            im = im.convert("LA")
            im.putalpha(mask)
    elif im.mode == "L" and tags is not None and tags.get(339, (1,))[0] == 2:
        im = signed_8bit(im)
    elif im.mode in ("1", "L") and isinstance(im.info.get("transparency"), int):
        # A gray PNG of 1, 2 or 4 bits with a tRNS key: Pillow keeps the key at the file's depth
        # but scales the samples to 8 bits (and "1" ignores it), so no pixel matches. Browsers
        # (Chromium, libpng) make the key's level transparent; so does the reference. A key out
        # of the depth's range is invalid and ignored, as browsers do.
        with open(path, "rb") as f:
            head = f.read(26)
        depth, colour = (head[24], head[25]) if head[:8] == b"\x89PNG\r\n\x1a\n" else (8, None)
        if colour == 0 and depth < 8:
            key, top = im.info["transparency"], (1 << depth) - 1
            im = im.convert("L")
            level = key * 255 // top
            mask = Image.new("L", im.size)
            mask.putdata([0 if key <= top and v == level else 255 for v in im.getdata()])
            im = im.convert("LA")
            im.putalpha(mask)
    icc = im.info.get("icc_profile")
    if icc and im.mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            alpha = im.getchannel("A") if im.mode in ("RGBA", "LA") else None
            base = {"RGBA": "RGB", "LA": "L"}.get(im.mode, im.mode)
            out_mode = "L" if base == "L" and src.profile.xcolor_space.strip() == "GRAY" else "RGB"
            converted = ImageCms.profileToProfile(im.convert(base), src, SRGB, outputMode=out_mode)
            if alpha is not None:
                converted = converted.convert("RGBA")
                converted.putalpha(alpha)
            im = converted
        except Exception:  # an unusable profile is ignored, as browsers and iiifd ignore it
            pass
    return im.convert("RGBA")


def premultiplied(im):
    px = im.tobytes()
    out = bytearray(len(px))
    for i in range(0, len(px), 4):
        a = px[i + 3]
        for c in range(3):
            out[i + c] = (px[i + c] * a + 127) // 255
        out[i + 3] = a
    return out


def compare(ref, got):
    if ref.size != got.size:
        return {"size": [list(ref.size), list(got.size)]}
    a, b = premultiplied(ref), premultiplied(got.convert("RGBA"))
    total = 0
    large = 0
    for x, y in zip(a, b):
        d = abs(x - y)
        total += d
        if d > 24:
            large += 1
    n = max(1, len(a))
    return {"mean": round(total / n, 3), "large": round(large / n, 5)}


def fetch(url):
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, r.read(), time.monotonic() - start
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.monotonic() - start
    except Exception as e:  # a dropped connection or a timeout: recorded, never retried
        return 0, str(e).encode(), time.monotonic() - start


def one(base, images, name):
    path = os.path.join(images, name)
    ident = urllib.request.quote(name, safe="")
    row = {"file": name}
    try:
        ref = reference(path)
        row["reference"] = "ok"
    except Exception as e:
        ref = None
        row["reference"] = f"{type(e).__name__}: {e}"[:200]
    info, _, t1 = fetch(f"{base}/iiif/3/{ident}/info.json")
    png, body, t2 = fetch(f"{base}/iiif/3/{ident}/full/max/0/default.png")
    thumb, _, t3 = fetch(f"{base}/iiif/3/{ident}/full/^!64,64/0/default.jpg")
    row["status"] = [info, png, thumb]
    row["slowest"] = round(max(t1, t2, t3), 3)
    if png != 200:
        row["message"] = body[:300].decode("utf-8", "replace")
    if ref is not None and png == 200:
        try:
            row.update(compare(ref, Image.open(io.BytesIO(body))))
        except Exception as e:
            row["size"] = f"output unreadable: {e}"
    return row


def main():
    base, images = sys.argv[1], sys.argv[2]
    names = sorted(n for n in os.listdir(images) if not n.startswith("."))
    with ThreadPoolExecutor(max_workers=2) as pool:
        rows = list(pool.map(lambda n: one(base, images, n), names))
    json.dump({"files": rows}, sys.stdout)


if __name__ == "__main__":
    main()
