"""report.html: the report's sections, the class-colour legend and a paged gallery of every image,
worst first, in one self-contained file (pictures are data URIs; no external resource).

Gallery rows are written by the evaluate tasks (`gallery_row`, one HTML fragment per image with its
thumbnails); `write_html` copies them into the page in rank order, one row at a time, so writing
holds one row in memory. Pages of `gallery_page` rows sit in `<template>` elements, whose pictures
the browser decodes only when the page is shown. Past `gallery_inline` images, further pages go to
`report_gallery/page-NNNN.js` beside the report (a 100k-image data set would make a page of
gigabytes), loaded by a script tag when shown, which works from a file:// URL.

The page records its state on <html> for tests and tools: data-ready="1" once a page of the
gallery is shown, data-page, data-errors (count of script or resource errors) and data-gallery-top
(the gallery's y position in CSS pixels).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from labelgen.report.markdown import Chart, RankEntry, Section, Table, pct, source_title
from labelgen.report.pictures import class_colours, heat_scale, png_data_uri

GALLERY_DIR = "report_gallery"


@dataclass(frozen=True)
class GalleryRow:
    """One image's row: its record (see `labelgen.numerics.quality.image_quality`) and its pictures as data URIs."""

    record: dict[str, Any]
    photo: str
    cams: list[tuple[int, str]]  # (label, heat map) per stored CAM, in stored order
    masks: dict[str, str]  # source name (or "gt") -> overlay
    not_scored: str | None  # why the index did not score this image's GT mask


_COLOURS = class_colours()


def _rgb(label: int) -> str:
    r, g, b = (int(v) for v in _COLOURS[label])
    return f"rgb({r},{g},{b})"


def _figure(css: str, uri: str, caption: str, attrs: str = "") -> str:
    text = html.escape(caption, quote=True)
    return f'<figure class="{css}"{attrs}><img src="{uri}" alt="{text}"><figcaption>{text}</figcaption></figure>'


def _info(row: GalleryRow, classes: tuple[str, ...]) -> str:
    rec = row.record
    tags = " ".join(_swatch(_rgb(t), classes[t]) for t in rec["tags"]) or "no tags (a negative)"
    lines = [f"<b>{html.escape(rec['id'])}</b> · {html.escape(rec['split'])}", tags]
    iou = rec["iou"].get(rec["final"]) if rec["gt"] else None
    if rec.get("corrected"):
        lines.append(f"corrected: GT mIoU {pct(iou)} against the correction, {html.escape(source_title(rec['final']))}")
    elif rec["gt"]:
        lines.append(f"GT mIoU {pct(iou)}, {html.escape(source_title(rec['final']))}")
    elif row.not_scored:
        lines.append("GT not scored")
    else:
        lines.append("no GT")
    what = "agreement" if rec["agreement"] is not None else ("tags found" if rec["tags"] else "background share")
    lines.append(f"GT-free score {pct(rec['score'])} ({what})")
    return '<div class="info">' + "<br>".join(lines) + "</div>"


def gallery_row(row: GalleryRow, classes: tuple[str, ...]) -> str:
    """One gallery row: info, photo, a heat map per tagged class, an overlay per mask, and GT."""
    rec = row.record
    conf = dict(zip(rec["tags"], rec["confidence"] or [], strict=False))
    names = html.escape(";".join(classes[t] for t in rec["tags"]), quote=True)
    image_id, split = html.escape(rec["id"], quote=True), html.escape(rec["split"], quote=True)
    parts = [
        f'<div class="row" data-id="{image_id}" data-split="{split}" data-rank="{rec["rank"]:.6f}"'
        f' data-score="{rec["score"]:.6f}" data-gt="{int(rec["gt"])}" data-tags="{names}"'
        f' data-corrected="{int(rec.get("corrected", False))}">',
        _info(row, classes),
        _figure("photo", row.photo, "image"),
    ]
    for label, uri in row.cams:
        score = f" · {conf[label]:.2f}" if label in conf else ""
        attrs = f' data-class="{html.escape(classes[label], quote=True)}"'
        parts.append(_figure("cam", uri, f"CAM {classes[label]}{score}", attrs))
    for source, uri in row.masks.items():
        title = "GT (corrected)" if source == "gt" and rec.get("corrected") else source_title(source)
        parts.append(_figure("mask", uri, title, f' data-source="{source}"'))
    if "gt" not in row.masks and row.not_scored:
        reason = html.escape(row.not_scored)
        parts.append(f'<figure class="nogt" data-source="gt"><div>GT not scored: {reason}</div></figure>')
    return "".join(parts) + "</div>\n"


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    out = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{out}</div>' if table.scroll else out


def section_html(section: Section, folder: Path) -> str:
    """Sentences as paragraphs; each run of tables and charts side by side (wrapping)."""
    out, group = [f"<section><h2>{html.escape(section.title)}</h2>"], []
    for block in [*section.blocks, ""]:
        if isinstance(block, Table):
            group.append(table_html(block))
        elif isinstance(block, Chart):
            uri = png_data_uri(folder / block.name)
            group.append(f'<div class="scroll"><img class="chart" src="{uri}" alt="{html.escape(block.alt)}"></div>')
        else:
            if group:
                out.append('<div class="flex">' + "".join(group) + "</div>")
                group = []
            if block:
                out.append(f"<p>{html.escape(block)}</p>")
    return "".join(out) + "</section>"


def _swatch(colour: str, name: str) -> str:
    return f'<span class="tag"><i style="background:{colour}"></i>{html.escape(name)}</span>'


def legend_html(classes: tuple[str, ...]) -> str:
    """Class colours of the overlays (and ignore), and the heat map scale."""
    items = [_swatch(_rgb(c), classes[c]) for c in range(1, len(classes))]
    items.append(_swatch("#fff", "ignore (255)"))
    scale = _scale_uri()
    items.append(f'<span class="tag">CAM 0 <img class="scale" src="{scale}" alt="heat map scale"> 1</span>')
    return '<div class="legend">' + " ".join(items) + "</div>"


def _scale_uri() -> str:
    buf = io.BytesIO()
    Image.fromarray(heat_scale()).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def read_row(parts_dir: Path, entry: RankEntry) -> str:
    """One gallery row fragment, read back from its evaluate task's .html part."""
    with (parts_dir / f"{entry.part:06d}.html").open("rb") as f:
        f.seek(entry.offset)
        return f.read(entry.length).decode("utf-8")


def _pages(count: int, size: int) -> Iterable[tuple[int, range]]:
    for n, start in enumerate(range(0, count, size), start=1):
        yield n, range(start, min(start + size, count))


def write_html(
    path: Path,
    run_dir: Path,
    sections: list[Section],
    classes: tuple[str, ...],
    ranking: list[RankEntry],
    parts_dir: Path,
    page_size: int,
    inline_images: int,
) -> None:
    """report.html (and report_gallery/ past `inline_images` images), streamed row by row."""
    folder = path.parent
    pages = list(_pages(len(ranking), page_size))
    external = folder / GALLERY_DIR
    with path.open("w", encoding="utf-8") as f:
        f.write(_HEAD)
        f.write(f"<h1>labelgen evaluation report</h1><p>Run folder: <code>{html.escape(str(run_dir))}</code></p>")
        for section in sections:
            f.write(section_html(section, folder))
        title = f"<h2>Gallery: {len(ranking)} images, worst first</h2><p>{html.escape(GALLERY_NOTE)}</p>"
        f.write(f'<section id="gallery">{title}{legend_html(classes)}{_PAGER}<div id="rows"></div>{_PAGER}</section>')
        for n, rows in pages:
            if rows.stop <= max(inline_images, page_size):  # page 1 is always inline
                f.write(f'<template id="page-{n}">')
                for i in rows:
                    f.write(read_row(parts_dir, ranking[i]))
                f.write("</template>\n")
            else:
                external.mkdir(exist_ok=True)
                _write_page_script(external / f"page-{n:04d}.js", n, (read_row(parts_dir, ranking[i]) for i in rows))
        f.write(f"<script>{_SCRIPT % {'pages': len(pages), 'dir': GALLERY_DIR}}</script></body></html>\n")


def _write_page_script(path: Path, number: int, rows: Iterable[str]) -> None:
    """`labelgenPage(n, [row, ...]);` with the rows as a JSON array, one row a line."""
    with path.open("w", encoding="utf-8") as f:
        f.write(f"labelgenPage({number}, [")
        for k, row in enumerate(rows):
            f.write(("\n" if k == 0 else ",\n") + json.dumps(row))
        f.write("\n]);\n")


GALLERY_NOTE = (
    "Sorted worst first: by the final mask's mIoU against GT where an image has GT, else by its GT-free score. "
    "Each row: the image, the CAM heat map of each tagged class (with the classifier's confidence), the "
    "pseudo-label and the prediction over the image in grey, and the GT where there is one."
)

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>labelgen evaluation report</title>
<script>
(function () {
  var root = document.documentElement;
  function fail(message) {
    root.dataset.errors = String((+root.dataset.errors || 0) + 1);
    root.dataset.lastError = String(message);
  }
  window.addEventListener("error", function (e) {
    fail(e.message || ((e.target && (e.target.src || e.target.tagName)) + " failed to load"));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { fail(e.reason); });
})();
</script>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 14px 0 6px; }
p { margin: 4px 0; max-width: 1100px; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; position: sticky; top: 0; }
.flex { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.scroll { max-height: 320px; overflow: auto; }
.legend { margin: 6px 0; }
.tag { display: inline-block; margin-right: 10px; white-space: nowrap; }
.tag i { display: inline-block; width: 12px; height: 12px; border: 1px solid #555; margin-right: 3px; }
.scale { vertical-align: middle; height: 10px; }
nav { margin: 6px 0; } nav button { margin-right: 4px; }
.row { display: flex; gap: 6px; align-items: flex-start; border-top: 1px solid #ddd; padding: 6px 0; }
.info { width: 210px; flex: none; font-size: 12px; overflow-wrap: anywhere; }
figure { margin: 0; font-size: 11px; text-align: center; }
figure img { display: block; border: 1px solid #ccc; }
.nogt div { width: 120px; font-size: 11px; color: #a33; text-align: left; }
</style></head><body>
"""

_PAGER = (
    '<nav><button data-go="-1">previous</button><button data-go="1">next</button> '
    'page <span class="page-number">1</span> of <span class="page-count"></span></nav>'
)

_SCRIPT = """
(function () {
  var root = document.documentElement, pages = %(pages)d, current = 0;
  var rows = document.getElementById("rows"), gallery = document.getElementById("gallery");
  function shown(n) {
    document.querySelectorAll(".page-number").forEach(function (e) { e.textContent = n; });
    root.dataset.page = String(n);
    root.dataset.galleryTop = String(Math.round(gallery.getBoundingClientRect().top + window.scrollY));
    root.dataset.ready = "1";
  }
  window.labelgenPage = function (n, html) {
    if (n !== current) return;
    rows.innerHTML = html.join("");
    shown(n);
  };
  function show(n) {
    if (n < 1 || n > pages || n === current) return;
    current = n;
    var page = document.getElementById("page-" + n);
    if (page) {
      rows.replaceChildren(page.content.cloneNode(true));
      shown(n);
    } else {
      var s = document.createElement("script");
      s.src = "%(dir)s/page-" + String(n).padStart(4, "0") + ".js";
      document.body.appendChild(s);
    }
  }
  document.querySelectorAll(".page-count").forEach(function (e) { e.textContent = pages; });
  document.querySelectorAll("nav button").forEach(function (b) {
    b.addEventListener("click", function () { show(current + Number(b.dataset.go)); });
  });
  var wanted = /page=(\\d+)/.exec(window.location.hash);
  show(wanted ? Math.min(pages, Math.max(1, Number(wanted[1]))) : 1);
  if (!pages) { shown(0); }
})();
"""
