"""The app's logic without a browser: upload -> prediction -> rendered image, table and JSON."""

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from chexcli.cli.main import app
from chexcli.errors import ChexError
from chexcli.render import item_color
from chexcli.serve.examples import EXAMPLES, example_path
from chexcli.serve.session import KEEP_IMAGES, ServeSession


def png_bytes(array) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def forged_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with (almost) no data: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def session(tiny_bundle):
    s = ServeSession.load(tiny_bundle, max_new_tokens=6)
    yield s
    s.close()


@pytest.fixture(scope="module")
def image_png():
    return png_bytes(np.random.default_rng(0).integers(0, 255, (300, 260), dtype=np.uint8))


def test_answer_is_what_chex_predict_prints_and_draws(session, image_png, tiny_bundle, tmp_path, monkeypatch, capsys):
    entry = session.add_upload(image_png, "a.png")
    assert entry.info() == {"id": entry.id, "name": "a.png", "width": 260, "height": 300, "crop": [0, 20, 260]}
    answer = session.ask(entry.id, ["left lung opacity", " cardiomegaly ", ""], [[20, 30, 120, 150]])

    (tmp_path / "a.png").write_bytes(image_png)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # `chex predict ... --json`, in process
        app(["predict", "a.png", "--model", str(tiny_bundle), "--prompt", "left lung opacity", "--prompt",
             "cardiomegaly", "--box", "20,30,120,150", "--max-new-tokens", "6", "--json"], standalone_mode=False)
    assert done.value.code == 0
    assert answer.json_line == capsys.readouterr().out.strip()  # the same JSON line, byte for byte
    drawn = np.asarray(Image.open(answer.png))
    assert np.array_equal(drawn, np.asarray(Image.open(tmp_path / "runs/predict/run/a.png")))  # the same drawing
    assert drawn.shape[1] == 260 and drawn.shape[0] > 300  # the image plus the legend panel

    assert [(row["index"], row["kind"], row["color"]) for row in answer.rows] == [
        (i + 1, kind, "#%02x%02x%02x" % item_color(i)) for i, kind in enumerate(["prompt", "prompt", "box"])]
    assert [row["query"] for row in answer.rows] == ["left lung opacity", "cardiomegaly", "box 20, 30 – 120, 150 px"]
    assert [row["sentence"] for row in answer.rows] == [q["sentence"].strip() for q in answer.record["queries"]]
    assert answer.rows[0]["score"] == round(answer.record["queries"][0]["score"], 3)
    assert answer.rows[2]["score"] is None and answer.report is None


def test_report_rows_come_first_and_image_encoding_is_reused(session):
    fresh = np.random.default_rng(5).integers(0, 255, (300, 260), dtype=np.uint8)  # not encoded before
    entry = session.add_upload(png_bytes(fresh), "b.png")
    calls = []
    hook = session.predictor.model.img_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = session.ask(entry.id, ["left lung"])
        again = session.ask(entry.id, boxes=["10,40,200,260"], report=True)  # predict + report: no new encoding
        other = session.add_upload(png_bytes(np.full((64, 80), 90, np.uint8)), "c.png")
        session.ask(other.id, ["left lung"])
    finally:
        hook.remove()
    assert len(calls) == 2  # one encoding per image, however many questions
    assert first.rows[0]["query"] == "left lung"
    kept = [q for q in again.record["report_queries"] if q["kept"]]
    assert again.report == " ".join(q["sentence"] for q in kept)
    assert [row["kind"] for row in again.rows] == ["report"] * len(kept) + ["box"]
    assert [row["query"] for row in again.rows[:len(kept)]] == [q["prompt"] for q in kept]
    assert again.rows[-1]["color"] == "#%02x%02x%02x" % item_color(len(kept))  # the box's colour in the image
    assert "box_pixels" not in json.dumps(again.record)


def test_examples_and_dicom_uploads(session, tmp_path):
    for name in EXAMPLES:
        entry = session.add_example(name)
        assert entry.name == example_path(name).name and (entry.width, entry.height) == (448, 512)
        assert Image.open(entry.preview).size == (448, 512)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "d.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = 240, 220
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(1).integers(0, 4095, (240, 220), dtype=np.uint16).tobytes()
    ds.save_as(tmp_path / "d.dcm", enforce_file_format=True)
    entry = session.add_upload((tmp_path / "d.dcm").read_bytes(), "scan.dcm")
    assert (entry.width, entry.height) == (220, 240)
    with pytest.raises(ChexError, match="unknown example"):
        session.add_example("nope")


def test_uploads_stay_in_the_temporary_folder(session, image_png):
    entry = session.add_upload(image_png, "../../../etc/evil name.png")
    assert entry.name == "evil name.png"
    assert entry.path.parent == session.workdir / "uploads" and entry.preview.parent == session.workdir / "uploads"
    assert session.add_upload(image_png, "C:\\x\\y.png").name == "y.png"


@pytest.mark.parametrize("data, name, message", [
    (b"", "empty.png", "empty.png: the file is empty"),
    (b"not an image at all", "notes.png", "notes.png: not a recognised image file"),
    (forged_png(200_000, 200_000), "bomb.png", "bomb.png: "),
    (b"II*\x00" + bytes(60), "scan.png", "scan.png: TIFF images are not supported (supported: PNG, JPEG, DICOM)"),
    (b"GIF89a" + bytes(60), "anim.gif", "anim.gif: GIF images are not supported"),
])
def test_bad_uploads_are_one_line_messages(session, image_png, data, name, message):
    session.add_upload(image_png, "good.png")
    kept = set((session.workdir / "uploads").iterdir())
    with pytest.raises(ChexError) as err:
        session.add_upload(data, name)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert str(session.workdir) not in str(err.value)  # names the user's file, not our copy
    assert set((session.workdir / "uploads").iterdir()) == kept  # the bad file is not kept


def test_size_and_pixel_limits(tiny_bundle):
    s = ServeSession.load(tiny_bundle, max_upload_bytes=50_000, max_pixels=100_000)
    try:
        with pytest.raises(ChexError, match=r"big.png: the file is .* MB; the limit is 0 MB"):
            s.add_upload(b"\0" * 50_001, "big.png")
        with pytest.raises(ChexError, match="wide.png: .*(pixel|megapixel)"):
            s.add_upload(png_bytes(np.zeros((300, 400), np.uint8)), "wide.png")  # 120 000 pixels, a few kB
        assert s.add_upload(png_bytes(np.zeros((300, 300), np.uint8)), "ok.png").width == 300
    finally:
        s.close()
    assert not s.workdir.exists()


def test_ask_errors(session, image_png):
    entry = session.add_upload(image_png, "e.png")
    cases = [
        (dict(), "nothing to ask"),
        (dict(prompts=["  "]), "nothing to ask"),
        (dict(boxes=[[0, 0, 400, 100]]), r"extends outside the image of 260x300"),
        (dict(boxes=[[50, 50, 40, 90]]), "x2 must be greater than x1"),
        (dict(boxes=[[1, 2, 3]]), "box 1: give four numbers"),
        (dict(boxes=[["a", 2, 3, 4]]), "box 1: give four numbers"),
        (dict(boxes=[[0, 0, 100, 10]]), "outside the centre square"),
        (dict(prompts=["x"] * 17), "at most 16"),
        (dict(prompts=["y" * 301]), "keep prompts under 300"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ChexError, match=message):
            session.ask(entry.id, **kwargs)
    with pytest.raises(ChexError, match="no longer available"):
        session.ask("0123456789ab", ["left lung"])


def test_old_images_are_forgotten_and_close_removes_everything(tiny_bundle):
    s = ServeSession.load(tiny_bundle)
    first = s.add_upload(png_bytes(np.zeros((40, 40), np.uint8)), "first.png")
    for k in range(KEEP_IMAGES):
        s.add_upload(png_bytes(np.full((40, 40), k, np.uint8)), f"{k}.png")
    with pytest.raises(ChexError, match="upload it again"):
        s.image(first.id)
    assert not first.path.exists() and not first.preview.exists()
    assert len(list((s.workdir / "uploads").glob("*-preview.png"))) == KEEP_IMAGES
    s.close()
    assert not s.workdir.exists()


def test_kept_images_are_capped_by_memory(tiny_bundle):
    s = ServeSession.load(tiny_bundle, keep_image_bytes=3 * 100 * 100 * 4)  # three 100 x 100 float32 images
    try:
        entries = [s.add_upload(png_bytes(np.full((100, 100), k, np.uint8)), f"{k}.png") for k in range(5)]
        assert s.kept_image_bytes() <= 3 * 100 * 100 * 4
        for old in entries[:2]:
            with pytest.raises(ChexError, match="upload it again"):
                s.image(old.id)
        assert [s.image(e.id).name for e in entries[2:]] == ["2.png", "3.png", "4.png"]
        big = s.add_upload(png_bytes(np.zeros((200, 200), np.uint8)), "big.png")  # alone over the cap: still kept
        assert s.image(big.id) is big and s.kept_image_bytes() == 200 * 200 * 4
    finally:
        s.close()
