"""Tests for the HTML pages (mrnn_jax/pages: captions, retrieval, the training run's page):
structure, escaping, images, summary, sorting, atomicity."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrnn_jax import run_dir
from mrnn_jax.errors import MrnnError
from mrnn_jax.pages import captions_page, common, retrieval_page, run_page
from mrnn_jax.pages.captions_page import ReportItem, write_html
from mrnn_jax.pages.retrieval_page import (
    ImageQuery,
    RetrievedImage,
    SentenceQuery,
    write_retrieval_html,
)

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


class Element:
    """A parsed element: tag, attributes, children (elements and text strings)."""

    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Element | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Element | str] = []

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Element):
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Element]:
        return [
            e
            for e in self.iter()
            if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
        ]


class Collector(HTMLParser):
    """Builds an :class:`Element` tree and checks that every end tag closes its element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {}, None)
        self.current = self.root
        self.doctype: str | None = None

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag, attrs) -> None:
        element = Element(tag, dict(attrs), self.current)
        self.current.children.append(element)
        if tag not in _VOID:
            self.current = element

    def handle_startendtag(self, tag, attrs) -> None:
        self.current.children.append(Element(tag, dict(attrs), self.current))

    def handle_endtag(self, tag) -> None:
        assert self.current.tag == tag, f"</{tag}> closes <{self.current.tag}>"
        self.current = self.current.parent

    def handle_data(self, data) -> None:
        self.current.children.append(data)


def parse(path: Path) -> Element:
    collector = Collector()
    collector.feed(path.read_text(encoding="utf-8"))
    collector.close()
    assert collector.current is collector.root, "unclosed elements"
    assert collector.doctype is not None and collector.doctype.lower() == "doctype html"
    return collector.root


def _pixels(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _decode_data_uri(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :], validate=True))) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def _write(tmp_path: Path, items, name: str = "captions.html", **kwargs) -> tuple[Path, Element]:
    path = tmp_path / name
    kwargs.setdefault("title", "Results")
    write_html(str(path), items, **kwargs)
    return path, parse(path)


def test_one_item_per_input_with_id_score_and_index(tmp_path: Path) -> None:
    scores = [0.1, None, 2.5, float("nan"), float("inf"), 1 / 3]
    items = [
        ReportItem(image_id=i if i % 2 else f"img-{i}", captions=[], references=[], score=s)
        for i, s in enumerate(scores)
    ]
    _, root = _write(tmp_path, items)
    cards = root.find_all(cls="item")
    assert [c.attrs["data-image-id"] for c in cards] == [
        "img-0",
        "1",
        "img-2",
        "3",
        "img-4",
        "5",
    ]
    assert [c.attrs["data-index"] for c in cards] == [str(i) for i in range(6)]
    attrs = [c.attrs["data-score"] for c in cards]
    assert attrs[1] == attrs[3] == ""  # None and NaN: no score
    assert [float(attrs[i]) for i in (0, 2, 4, 5)] == [0.1, 2.5, float("inf"), 1 / 3]  # exact
    shown = [c.find_all(cls="score-value")[0].text() for c in cards]
    assert shown == ["0.1000", "n/a", "2.5000", "n/a", "inf", "0.3333"]


def test_captions_references_and_ids_are_escaped(tmp_path: Path) -> None:
    nasty = "a <b>& \"quoted\" 'x' </article>"
    item = ReportItem(
        image_id='id"<i>',
        captions=[(nasty, -1.23456), ("a red circle", -0.5)],
        references=["ref <b>one</b> & two", "a red circle"],
        score=1.0,
    )
    path, root = _write(tmp_path, [item], title="Title <b>&", score_name="CIDEr <x>")
    assert root.find_all("b") == [] and root.find_all("i") == [] and root.find_all("x") == []
    (card,) = root.find_all(cls="item")
    assert card.attrs["data-image-id"] == 'id"<i>'
    assert [c.text() for c in card.find_all(cls="caption")] == [nasty, "a red circle"]
    assert [r.text() for r in card.find_all(cls="reference")] == [
        "ref <b>one</b> & two",
        "a red circle",
    ]
    logprobs = card.find_all(cls="logprob")
    assert [float(lp.attrs["data-logprob"]) for lp in logprobs] == [-1.23456, -0.5]
    assert "-1.235" in logprobs[0].text()
    assert root.find_all("title")[0].text() == "Title <b>&"
    assert root.find_all("h1")[0].text() == "Title <b>&"
    assert "CIDEr <x>" in card.find_all(cls="score")[0].text()
    assert "&lt;b&gt;&amp;" in path.read_text(encoding="utf-8")


def test_embedded_images_decode_to_the_original_pixels(tmp_path: Path) -> None:
    images = [_pixels(0), _pixels(1, size=40)]
    items = [ReportItem(i, [("x", -1.0)], ["x"], image=im) for i, im in enumerate(images)]
    _, root = _write(tmp_path, items)
    thumbs = root.find_all("img", cls="thumb")
    assert len(thumbs) == 2
    for img, original in zip(thumbs, images, strict=True):
        np.testing.assert_array_equal(_decode_data_uri(img.attrs["src"]), original)
        assert "pixelated" in img.classes  # small images are scaled up without blurring
        assert img.attrs["width"] == str(captions_page.THUMB_WIDTH)
        assert img.attrs["alt"]


def test_grey_and_large_images(tmp_path: Path) -> None:
    grey = np.arange(64 * 32, dtype=np.uint8).reshape(32, 64)
    large = np.zeros((200, 800, 3), np.uint8)
    items = [ReportItem("g", [], [], image=grey), ReportItem("l", [], [], image=large)]
    _, root = _write(tmp_path, items)
    g, big = root.find_all("img", cls="thumb")
    np.testing.assert_array_equal(_decode_data_uri(g.attrs["src"]), grey)
    assert g.attrs["height"] == str(captions_page.THUMB_WIDTH // 2)
    shrunk = _decode_data_uri(big.attrs["src"])  # kept small: the page embeds every image
    assert shrunk.shape == (
        captions_page.MAX_EMBEDDED_SIDE // 4,
        captions_page.MAX_EMBEDDED_SIDE,
        3,
    )
    assert "pixelated" not in big.classes


@pytest.mark.parametrize(
    "image",
    [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8), np.zeros((0, 8, 3), np.uint8)],
)
def test_bad_images_raise_before_writing(tmp_path: Path, image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_html(str(tmp_path / "r.html"), [ReportItem(1, [], [], image=image)], title="t")
    assert list(tmp_path.iterdir()) == []


def test_image_and_image_path_together_raise(tmp_path: Path) -> None:
    item = ReportItem(1, [], [], image=_pixels(0), image_path="a.png")
    with pytest.raises(ValueError, match="not both"):
        write_html(str(tmp_path / "r.html"), [item], title="t")


def test_image_paths_are_relative_to_the_page(tmp_path: Path, monkeypatch) -> None:
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    Image.fromarray(_pixels(2, size=32)).save(image_dir / "a b#1.png")
    monkeypatch.chdir(tmp_path)  # a relative image_path is relative to the current folder
    items = [
        ReportItem("abs", [], [], image_path=str(image_dir / "a b#1.png")),
        ReportItem("rel", [], [], image_path="images/a b#1.png"),
        ReportItem("missing", [], [], image_path=str(tmp_path / "pages" / "gone.png")),
        ReportItem("none", [], []),
    ]
    page = tmp_path / "pages" / "sub" / "captions.html"  # parent folders are created
    write_html(str(page), items, title="t")
    root = parse(page)
    cards = root.find_all(cls="item")
    srcs = [c.find_all("img", cls="thumb")[0].attrs["src"] for c in cards[:3]]
    assert srcs[:2] == ["../../images/a%20b%231.png"] * 2
    assert srcs[2] == "../gone.png"
    resolved = (page.parent / urllib.parse.unquote(srcs[0])).resolve()
    assert resolved == (image_dir / "a b#1.png").resolve()
    first = cards[0].find_all("img")[0]
    assert "pixelated" in first.classes and first.attrs["height"] == str(captions_page.THUMB_WIDTH)
    assert "width" not in cards[2].find_all("img")[0].attrs  # unreadable: no size known
    assert cards[3].find_all("img") == [] and cards[3].find_all(cls="no-image")


def test_summary_table(tmp_path: Path) -> None:
    summary = {"perplexity": 12.345678, "BLEU-4": None, "CIDEr-D": float("nan"), "split": "test"}
    summary["images"] = 6
    _, root = _write(tmp_path, [], summary=summary)
    (table,) = root.find_all("table", cls="summary")
    rows = {r.find_all("th")[0].text(): r.find_all("td")[0].text() for r in table.find_all("tr")}
    assert rows == {
        "perplexity": "12.3457",
        "BLEU-4": "n/a",
        "CIDEr-D": "n/a",
        "split": "test",
        "images": "6",
    }
    assert root.find_all(cls="item") == []


def test_no_summary_no_table_and_empty_lists(tmp_path: Path) -> None:
    _, root = _write(tmp_path, [ReportItem("a", [], [])], summary=None)
    assert root.find_all("table") == []
    assert len(root.find_all(cls="empty")) == 2  # no captions, no references


def test_page_is_offline_and_has_the_sort_control(tmp_path: Path) -> None:
    items = [ReportItem(i, [("c", -1.0)], ["r"], score=i, image=_pixels(i)) for i in range(3)]
    path, root = _write(tmp_path, items, score_name="CIDEr-D")
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE)
    assert root.find_all("link") == [] and root.find_all("iframe") == []
    assert all(s.attrs.get("src") is None for s in root.find_all("script"))
    assert all(i.attrs["src"].startswith("data:") for i in root.find_all("img"))
    (select,) = root.find_all("select")
    options = select.find_all("option")
    assert [o.attrs["value"] for o in options] == list(captions_page.SORT_ORDERS)
    assert "CIDEr-D" in options[1].text()
    (script,) = root.find_all("script")
    assert "sort-order" in script.text() and "addEventListener" in script.text()
    assert root.find_all("main")[0].attrs["id"] == "items"


_NODE_HARNESS = """
const fs = require("fs");
const [script, cards, hash] = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const items = cards.map((attrs) => ({ getAttribute: (name) => attrs[name] }));
let order = items.slice();
const grid = {
  querySelectorAll: () => items.slice(),
  appendChild(el) { order = order.filter((x) => x !== el); order.push(el); },
};
let onChange = null;
const select = {
  value: "original",
  querySelector: (q) => (/"(original|score-desc|score-asc)"/.test(q) ? {} : null),
  addEventListener(type, f) { if (type === "change") onChange = f; },
};
globalThis.document = { getElementById: (id) => (id === "items" ? grid : select) };
globalThis.window = {
  location: { hash },
  history: { replaceState(state, title, url) { window.location.hash = url; } },
};
const ids = () => order.map((el) => el.getAttribute("data-image-id"));
new Function(script)();
const out = { initial: ids() };
for (const value of ["score-desc", "score-asc", "original"]) {
  select.value = value;
  onChange();
  out[value] = ids();
  out[value + "-hash"] = window.location.hash;
}
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_sort_script_orders_items_in_node(tmp_path: Path) -> None:
    scores = [0.5, None, 2.0, -1.0, 0.5, float("inf")]
    items = [ReportItem(f"i{k}", [], [], score=s) for k, s in enumerate(scores)]
    _, root = _write(tmp_path, items)
    script = root.find_all("script")[0].text()
    cards = [c.attrs for c in root.find_all(cls="item")]
    harness = tmp_path / "harness.js"
    harness.write_text(_NODE_HARNESS, encoding="utf-8")
    results = {}
    for hash_ in ("", "#sort=score-asc", "#sort=bogus"):
        data = tmp_path / "data.json"
        data.write_text(json.dumps([script, cards, hash_]), encoding="utf-8")
        done = subprocess.run(
            ["node", str(harness), str(data)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        results[hash_] = json.loads(done.stdout)
    original = [f"i{k}" for k in range(6)]
    ascending = ["i3", "i0", "i4", "i2", "i5", "i1"]  # ties keep input order; no score last
    out = results[""]
    assert out["initial"] == original and out["original"] == original
    assert out["score-desc"] == ["i5", "i2", "i0", "i4", "i3", "i1"]
    assert out["score-asc"] == ascending
    assert out["score-asc-hash"] == "#sort=score-asc"
    assert results["#sort=score-asc"]["initial"] == ascending  # a bookmarked sorted view
    assert results["#sort=bogus"]["initial"] == original


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(captions_page.os, "fsync", broken_fsync)
    target = tmp_path / "captions.html"
    with pytest.raises(MrnnError, match="No space left"):
        write_html(str(target), [ReportItem(1, [("c", -1.0)], ["r"])], title="t")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file either


def test_failed_replace_keeps_the_old_page(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "captions.html"
    write_html(target, [ReportItem("old", [], [])], title="old")
    old = target.read_bytes()

    def broken_replace(src, dst) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(captions_page.os, "replace", broken_replace)
    with pytest.raises(KeyboardInterrupt):
        write_html(target, [ReportItem("new", [], [])], title="new")
    assert target.read_bytes() == old
    assert os.listdir(tmp_path) == ["captions.html"]


def test_overwrites_and_is_readable(tmp_path: Path) -> None:
    target = tmp_path / "captions.html"
    write_html(target, [ReportItem("old", [], [])], title="old")
    write_html(target, [ReportItem("new", [], [])], title="new")
    assert [c.attrs["data-image-id"] for c in parse(target).find_all(cls="item")] == ["new"]
    assert target.stat().st_mode & 0o044 == 0o044  # group and others may read the page


# --- the retrieval page ------------------------------------------------------------------

_OFFLINE = re.compile(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", re.IGNORECASE)


def _write_retrieval(
    tmp_path: Path,
    *,
    sentence_queries=(),
    image_queries=(),
    summary=None,
    name: str = "retrieval.html",
    title: str = "Retrieval",
) -> tuple[Path, Element]:
    path = tmp_path / name
    write_retrieval_html(
        path,
        title=title,
        summary=summary,
        sentence_queries=list(sentence_queries),
        image_queries=list(image_queries),
    )
    return path, parse(path)


def _section(root: Element, heading: str) -> Element:
    (section,) = [s for s in root.find_all("section") if s.find_all("h2")[0].text() == heading]
    return section


def test_retrieval_page_queries_ranks_and_correct_marks(tmp_path: Path) -> None:
    sentence_queries = [
        SentenceQuery(
            "a dog runs",
            truth_image_id=7,
            rank=np.int64(2),  # as computed by retrieval.first_correct_ranks
            retrieved=[
                RetrievedImage(3, -3.25, False),
                RetrievedImage(7, np.float32(-4.5), np.bool_(True)),
                RetrievedImage("x", -9.0, False),
            ],
        ),
        SentenceQuery("a cat sleeps", "cat", 1, [RetrievedImage("cat", 1 / 3, True)]),
        SentenceQuery("nothing found", 5, 40, []),
    ]
    image_queries = [
        ImageQuery(
            "img-1",
            rank=3,
            retrieved=[("a bird", -1.5, False), ("a cat", -2.0, False), ("a dog", -2.5, True)],
            references=["a dog", "the dog"],
        ),
        ImageQuery(42, 11, [("wrong", 0.0, False), ("also wrong", -0.1, False)], []),
    ]
    _, root = _write_retrieval(
        tmp_path, sentence_queries=sentence_queries, image_queries=image_queries
    )
    headings = [h.text() for h in root.find_all("h2")]
    assert headings == ["Images for a sentence", "Sentences for an image"]

    by_sentence = _section(root, "Images for a sentence")
    cards = by_sentence.find_all("article", cls="sentence-query")
    assert len(cards) == 3 and cards == root.find_all("article", cls="sentence-query")
    assert all("query" in c.classes for c in cards)
    assert [c.attrs["data-rank"] for c in cards] == ["2", "1", "40"]
    assert [c.attrs["data-truth-image-id"] for c in cards] == ["7", "cat", "5"]
    assert [c.find_all(cls="query-sentence")[0].text() for c in cards] == [
        "a dog runs",
        "a cat sleeps",
        "nothing found",
    ]
    assert [c.find_all(cls="rank-value")[0].text() for c in cards] == ["2", "1", "40"]
    assert "not among the top 0" in cards[2].find_all(cls="rank")[0].text()
    assert "not among" not in cards[0].find_all(cls="rank")[0].text()
    hits = [c.find_all(cls="retrieved") for c in cards]
    assert [len(h) for h in hits] == [3, 1, 0]
    assert [h.attrs["data-image-id"] for h in hits[0]] == ["3", "7", "x"]
    assert [h.attrs["data-position"] for h in hits[0]] == ["1", "2", "3"]
    assert [float(h.attrs["data-score"]) for h in hits[0]] == [-3.25, -4.5, -9.0]
    assert float(hits[1][0].attrs["data-score"]) == 1 / 3  # exact
    assert ["correct" in h.classes for h in hits[0]] == [False, True, False]
    assert [len(h.find_all(cls="mark")) for h in hits[0]] == [0, 1, 0]  # not colour alone
    assert "-3.250" in hits[0][0].text()
    assert "ground truth: 7" in cards[0].find_all("figure", cls="truth")[0].text()
    assert cards[2].find_all(cls="empty")

    by_image = _section(root, "Sentences for an image")
    cards = by_image.find_all("article", cls="image-query")
    assert len(cards) == 2 and cards == root.find_all("article", cls="image-query")
    assert [(c.attrs["data-image-id"], c.attrs["data-rank"]) for c in cards] == [
        ("img-1", "3"),
        ("42", "11"),
    ]
    first = cards[0].find_all(cls="retrieved")
    assert [h.find_all(cls="sentence")[0].text() for h in first] == ["a bird", "a cat", "a dog"]
    assert ["correct" in h.classes for h in first] == [False, False, True]
    assert [float(h.attrs["data-score"]) for h in first] == [-1.5, -2.0, -2.5]
    assert [r.text() for r in cards[0].find_all(cls="reference")] == ["a dog", "the dog"]
    assert "not among the top 2" in cards[1].find_all(cls="rank")[0].text()
    assert cards[1].find_all(cls="correct") == [] and cards[1].find_all(cls="reference") == []
    assert len(root.find_all(cls="correct")) == 3
    assert len(root.find_all(cls="retrieved")) == 9
    assert [p.text() for p in root.find_all("p", cls="count")] == ["3 sentences", "2 images"]


def test_retrieval_text_is_escaped(tmp_path: Path) -> None:
    nasty = "a <b>& \"quoted\" 'x' </article>"
    query = SentenceQuery(nasty, 'id"<i>', 1, [RetrievedImage('id"<i>', -1.0, True)])
    image_query = ImageQuery("<i>&", 1, [(nasty, -1.0, True)], ["ref <b>one</b> & two"])
    path, root = _write_retrieval(
        tmp_path,
        sentence_queries=[query],
        image_queries=[image_query],
        summary={"<b>dir</b>": {"R@1": 1.0, "<x>": "<i>"}},
        title="Title <b>&",
    )
    assert root.find_all("b") == [] and root.find_all("i") == [] and root.find_all("x") == []
    assert root.find_all("title")[0].text() == root.find_all("h1")[0].text() == "Title <b>&"
    (card,) = root.find_all("article", cls="sentence-query")
    assert card.find_all(cls="query-sentence")[0].text() == nasty
    assert card.attrs["data-truth-image-id"] == 'id"<i>'
    assert card.find_all(cls="retrieved")[0].attrs["data-image-id"] == 'id"<i>'
    (card,) = root.find_all("article", cls="image-query")
    assert card.attrs["data-image-id"] == "<i>&"
    assert card.find_all(cls="sentence")[0].text() == nasty
    assert card.find_all(cls="reference")[0].text() == "ref <b>one</b> & two"
    (row,) = root.find_all("table")[0].find_all("tbody")[0].find_all("tr")
    assert row.attrs["data-direction"] == "<b>dir</b>"
    assert row.find_all("td")[-1].text() == "<i>"
    assert "&lt;/article&gt;" in path.read_text(encoding="utf-8")


def test_retrieval_thumbnails_decode_to_the_pixels(tmp_path: Path, monkeypatch) -> None:
    truth, hit, miss, grey, query_image = (_pixels(k, size=24 + k) for k in range(5))
    grey = grey[:, :, 0]
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    Image.fromarray(_pixels(9, size=32)).save(image_dir / "f 1.png")
    monkeypatch.chdir(tmp_path)
    sentence_queries = [
        SentenceQuery(
            "s",
            1,
            1,
            [
                RetrievedImage(1, -1.0, True, image=hit),
                RetrievedImage(2, -2.0, False, image=miss),
                RetrievedImage(3, -3.0, False, image=grey),
                RetrievedImage(4, -4.0, False, image_path="images/f 1.png"),
                RetrievedImage(5, -5.0, False),
            ],
            truth_image=truth,
        ),
        SentenceQuery("t", 4, 4, [], truth_image_path=str(image_dir / "f 1.png")),
    ]
    image_queries = [ImageQuery("q", 1, [], [], image=query_image), ImageQuery("none", 1, [], [])]
    page = tmp_path / "pages" / "retrieval.html"  # parent folder created
    _, root = _write_retrieval(
        page.parent, sentence_queries=sentence_queries, image_queries=image_queries
    )
    first, second = root.find_all("article", cls="sentence-query")
    (truth_img,) = first.find_all("figure", cls="truth")[0].find_all("img", cls="thumb")
    np.testing.assert_array_equal(_decode_data_uri(truth_img.attrs["src"]), truth)
    hits = first.find_all(cls="retrieved")
    for li, expected in zip(hits[:3], [hit, miss, grey], strict=True):
        (img,) = li.find_all("img", cls="thumb")
        np.testing.assert_array_equal(_decode_data_uri(img.attrs["src"]), expected)
        assert img.attrs["width"] == str(common.THUMB_WIDTH) and "pixelated" in img.classes
    assert hits[3].find_all("img")[0].attrs["src"] == "../images/f%201.png"
    assert hits[4].find_all("img") == [] and hits[4].find_all(cls="no-image")
    assert second.find_all("img")[0].attrs["src"] == "../images/f%201.png"
    query_card, empty_card = root.find_all("article", cls="image-query")
    (img,) = query_card.find_all("img", cls="thumb")
    np.testing.assert_array_equal(_decode_data_uri(img.attrs["src"]), query_image)
    assert empty_card.find_all("img") == [] and empty_card.find_all(cls="no-image")


def test_retrieval_summary_table(tmp_path: Path) -> None:
    summary = {
        "image retrieval": {
            "R@1": 100 / 3,
            "R@5": 50.0,
            "R@10": 100.0,
            "median rank": 2.0,
            "mean rank": 12.25,
        },
        "sentence retrieval": {"R@1": 0.0, "median rank": 7, "mean rank": float("nan")},
        "sentence retrieval (raw)": {"R@10": None, "R@50": 75.0},
    }
    _, root = _write_retrieval(tmp_path, summary=summary)
    (table,) = root.find_all("table", cls="summary")
    header = [th.text() for th in table.find_all("thead")[0].find_all("th")]
    assert header == ["direction", *retrieval_page.RETRIEVAL_COLUMNS, "R@50"]
    rows = {
        r.find_all("th")[0].text(): [td.text() for td in r.find_all("td")]
        for r in table.find_all("tbody")[0].find_all("tr")
    }
    assert list(rows) == list(summary)  # directions in the given order
    assert rows == {
        "image retrieval": ["33.3", "50.0", "100.0", "2", "12.25", "n/a"],
        "sentence retrieval": ["0.0", "n/a", "n/a", "7", "n/a", "n/a"],
        "sentence retrieval (raw)": ["n/a", "n/a", "n/a", "n/a", "n/a", "75.0"],
    }
    cells = table.find_all("tbody")[0].find_all("tr")[0].find_all("td")
    assert [c.attrs["data-metric"] for c in cells] == [*retrieval_page.RETRIEVAL_COLUMNS, "R@50"]
    assert float(cells[0].attrs["data-value"]) == 100 / 3  # exact
    for empty in (None, {}):
        _, root = _write_retrieval(tmp_path, summary=empty, name="empty.html")
        assert root.find_all("table") == []
        assert root.find_all("article") == [] and len(root.find_all(cls="empty")) == 2


def test_retrieval_page_is_offline(tmp_path: Path) -> None:
    sentence_queries = [
        SentenceQuery("s", 0, 1, [RetrievedImage(0, -1.0, True, image=_pixels(0))], _pixels(0))
    ]
    image_queries = [ImageQuery(0, 1, [("s", -1.0, True)], ["s"], image=_pixels(0))]
    path, root = _write_retrieval(
        tmp_path, sentence_queries=sentence_queries, image_queries=image_queries
    )
    assert not _OFFLINE.search(path.read_text(encoding="utf-8"))
    assert root.find_all("link") == [] and root.find_all("iframe") == []
    assert root.find_all("script") == []
    imgs = root.find_all("img")
    assert len(imgs) == 3 and all(i.attrs["src"].startswith("data:") for i in imgs)
    assert all(a.attrs["href"].startswith("#") for a in root.find_all("a"))
    assert {a.attrs["href"][1:] for a in root.find_all("a")} == {
        s.attrs["id"] for s in root.find_all("section")
    }


@pytest.mark.parametrize(
    ("sentence_query", "image_query", "error"),
    [
        (SentenceQuery("s", 0, 0, []), None, "rank"),
        (SentenceQuery("s", 0, 1.0, []), None, "rank"),
        (None, ImageQuery(0, -3, [], []), "rank"),
        (None, ImageQuery(0, True, [], []), "rank"),
        (SentenceQuery("s", 0, 1, [], truth_image=np.zeros((4, 4), np.float32)), None, "uint8"),
        (
            SentenceQuery("s", 0, 1, [RetrievedImage(1, 0.0, True, np.zeros((4, 4, 4), np.uint8))]),
            None,
            "uint8",
        ),
        (None, ImageQuery(0, 1, [], [], image=_pixels(0), image_path="a.png"), "not both"),
    ],
)
def test_retrieval_bad_queries_raise_before_writing(
    tmp_path: Path, sentence_query, image_query, error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        write_retrieval_html(
            tmp_path / "r.html",
            title="t",
            summary=None,
            sentence_queries=[sentence_query] if sentence_query else [],
            image_queries=[image_query] if image_query else [],
        )
    assert list(tmp_path.iterdir()) == []


def test_retrieval_write_is_atomic(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "retrieval.html"
    query = SentenceQuery("s", 0, 1, [RetrievedImage(0, -1.0, True)])

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(retrieval_page.os, "fsync", broken_fsync)
        with pytest.raises(MrnnError, match="No space left"):
            _write_retrieval(tmp_path, sentence_queries=[query])
    assert list(tmp_path.iterdir()) == []  # neither the page nor a temporary file

    _write_retrieval(tmp_path, sentence_queries=[query], title="old")
    old = target.read_bytes()

    def broken_replace(src, dst) -> None:
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(retrieval_page.os, "replace", broken_replace)
    with pytest.raises(MrnnError, match="Permission denied"):
        _write_retrieval(tmp_path, sentence_queries=[query, query], title="new")
    assert target.read_bytes() == old
    assert os.listdir(tmp_path) == ["retrieval.html"]
    assert target.stat().st_mode & 0o044 == 0o044


# --- the training run's page -------------------------------------------------------------


def test_run_page_is_escaped_and_well_formed(tmp_path: Path) -> None:
    nasty = "a <script>alert(1)</script> & \"quoted\" 'x' </td>"
    workdir = tmp_path / "run <b>"
    workdir.mkdir()
    results = {
        "best_step": 20,
        "selected_by": {"metric": "val/<i>", "mode": "max", "value": 0.5},
        "splits": {"val <b>": {"perplexity": 9.87, "<x>": "<i>"}},
        "examples": {
            "val <b>": [{"image_id": "<1>", "caption": nasty, "references": [nasty, "r"]}]
        },
    }
    path = Path(run_page.write_run_report(workdir, results))
    assert path == workdir / run_dir.REPORT_FILE
    root = parse(path)
    assert root.find_all("script") == [] and root.find_all("i") == []
    assert root.find_all("h1")[0].text() == "m-RNN training run: run <b>"
    best, selected = root.find_all("b")  # the page's own two: nothing from the values
    assert best.attrs["data-best-step"] == best.text() == "20"
    assert selected.attrs["data-selected-by"] == selected.text() == "val/<i>"
    (table,) = root.find_all("table", cls="results")
    assert [th.text() for th in table.find_all("th")] == ["split", "perplexity", "<x>", "val <b>"]
    assert [td.text() for td in table.find_all("td")] == ["9.8700", "<i>"]
    (examples,) = root.find_all("table", cls="examples")
    cells = examples.find_all("tr")[1].find_all("td")
    assert [c.text() for c in cells] == ["<1>", nasty, nasty + "r"]
    assert len(cells[2].find_all("br")) == 1
    assert "&lt;script&gt;" in path.read_text(encoding="utf-8")
