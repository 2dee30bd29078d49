"""One bad file must never stop the studio: pipes, sockets, links, image bombs, endless voice-overs,
TOML that breaks parsers, names too long for a file system, files no job can name.

Each case is a real file in tmp_path, checked through the parser, `hotfolder validate` (a real
process: exit 2 and a message, never a traceback, never a hang) and, where it is about the daemon,
the real daemon with the fake backend. Waiting is polling with deadlines or a subprocess timeout.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import Root
from hotfolder import media
from hotfolder.config import Config
from hotfolder.errors import JobInvalid
from hotfolder.job import attachments, names
from hotfolder.job.spec import parse, safe_name

SMALL = 'width = 64\nheight = 64\nduration = 0.5\nfps = 16\nsteps = 2\n'
QUICK = 30  # seconds: a command that hangs fails the test instead of the suite


# --- files made here -------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb when that is huge)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def flac_claiming(path: Path, seconds: float, rate: int = 8000) -> Path:
    """Half a second of FLAC whose header (STREAMINFO's total samples) claims `seconds`."""
    make_audio(path, 0.5, source=f"anullsrc=r={rate}:cl=mono")
    data = bytearray(path.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    field = int.from_bytes(data[18:26], "big")  # sample rate (20 bits), channels, bits, total samples (36 bits)
    field = field & ~((1 << 36) - 1) | int(rate * seconds)
    data[18:26] = field.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def make_audio(path: Path, seconds: float, source: str = "sine=frequency=440") -> Path:
    subprocess.run([media.ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"{source}:duration={seconds}", str(path)], check=True)
    return path


def folder_job(base: Path, name: str, toml: str, files: dict[str, bytes] | None = None) -> Path:
    folder = base / name
    folder.mkdir(parents=True)
    (folder / f"{name}.toml").write_text(toml, encoding="utf-8")
    for rel, data in (files or {}).items():
        (folder / rel).write_bytes(data)
    return folder


def validate(root: Root, *paths: Path) -> subprocess.CompletedProcess[str]:
    out = root.cli("validate", *map(str, paths), timeout=QUICK)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    return out


def invalid(path: Path, config: Config, **kwargs) -> str:
    with pytest.raises(JobInvalid) as info:
        parse(path, config, **kwargs)
    return str(info.value)


def checked_file(key: str, name: str, base: Path, config: Config) -> str:
    with pytest.raises(JobInvalid) as info:
        attachments.check_file(key, name, base, config, loose=False)
    return str(info.value)


# --- 12.1 pipes, sockets, devices named like job files ---------------------------------------


def test_validate_refuses_a_fifo_job_file_at_once(root: Root, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    out = validate(root, fifo)  # never opened: a reader would wait for a writer forever
    assert out.returncode == 2
    assert "fifo.toml: the file is a named pipe (FIFO), not a plain file" in out.stdout


def test_a_fifo_inside_a_job_folder_as_its_job_file_or_its_image_is_refused(root: Root, tmp_path: Path) -> None:
    pipe_job = tmp_path / "pipe-job"
    pipe_job.mkdir()
    os.mkfifo(pipe_job / "job.toml")
    pipe_image = folder_job(tmp_path, "pipe-image", f'prompt = "x"\n{SMALL}[image]\nfile = "first.png"\n')
    os.mkfifo(pipe_image / "first.png")
    out = validate(root, pipe_job, pipe_image)
    assert out.returncode == 2
    assert "pipe-job: 'job.toml' is a named pipe (FIFO), not a plain file" in out.stdout
    assert 'pipe-image: image.file = "first.png" is a named pipe (FIFO), not a plain file' in out.stdout


def test_a_socket_named_like_a_job_file_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative name: socket paths are limited to about 100 bytes
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("job.toml")
        message = invalid(tmp_path / "job.toml", Config(root=tmp_path))
    assert message.startswith("job.toml: the file is a socket, not a plain file")


def test_the_daemon_fails_a_fifo_in_the_inbox_and_goes_on(root: Root) -> None:
    os.mkfifo(root.inbox / "pipe.toml")
    (root.inbox / "ok.toml").write_text(f'prompt = "A lake"\n{SMALL}')
    run = root.cli("run", "--once", fake=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert [root.metadata(r)["source"] for r in root.results()] == ["ok.toml"]
    [failed] = root.failures()
    assert "the file is a named pipe (FIFO)" in (failed / "error.txt").read_text()


# --- 12.4 no link is ever followed inside a job folder ---------------------------------------


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("TOPSECRET-7f3a the private notes of someone else")
    return secret


def test_a_job_folder_whose_job_file_is_a_link_is_refused_and_never_read(root: Root, tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    folder = tmp_path / "linked"
    folder.mkdir()
    os.symlink(secret, folder / "secret.txt")
    loose = tmp_path / "loose-link.txt"
    os.symlink(secret, loose)
    out = validate(root, folder, loose)
    assert out.returncode == 2
    assert ("linked: 'secret.txt' is a symbolic link; hotfolder never follows links: copy the file itself"
            in out.stdout)
    assert "loose-link.txt: the file is a symbolic link; hotfolder never follows links" in out.stdout
    assert "TOPSECRET" not in out.stdout + out.stderr


def test_the_daemon_never_reads_a_linked_job_file_in_a_job_folder(root: Root, tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    staging = root.inbox / ".linked"
    staging.mkdir()
    os.symlink(secret, staging / "secret.txt")
    os.rename(staging, root.inbox / "linked")
    run = root.cli("run", "--once", fake=True, timeout=60)
    assert run.returncode == 1
    assert root.results() == []
    [failed] = root.failures()
    assert "'secret.txt' is a symbolic link" in (failed / "error.txt").read_text()
    for base in (root.path, root.path.parent / "logs"):
        for path in base.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert b"TOPSECRET" not in path.read_bytes(), path
    assert "TOPSECRET" not in run.stdout + run.stderr


# --- 12.2 image bombs, endless voice-overs, every parser exception -----------------------------


def test_an_image_bomb_is_refused_naming_the_file_and_the_pixel_limit(root: Root, tmp_path: Path) -> None:
    bomb = png_header(100_000, 100_000)
    assert len(bomb) < 100
    folder = folder_job(tmp_path, "bomb", f'prompt = "x"\n{SMALL}[image]\nfile = "first.png"\n', {"first.png": bomb})
    message = checked_file("image.file", "first.png", folder, Config(root=tmp_path))
    assert 'image.file = "first.png" is too large an image' in message
    assert f"{attachments.MAX_IMAGE_PIXELS:,} pixels" in message
    out = validate(root, folder)
    assert out.returncode == 2 and 'image.file = "first.png" is too large an image' in out.stdout


def test_the_pixel_limit_is_hotfolders_own_not_pillows(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # whatever Pillow's global says
    assert attachments.MAX_IMAGE_PIXELS == 50_000_000
    (tmp_path / "wide.png").write_bytes(png_header(10_000, 6_000))  # 60 MP: under Pillow's own warning
    message = checked_file("image.file", "wide.png", tmp_path, Config(root=tmp_path))
    assert "10000x6000 (60,000,000 pixels)" in message and "50,000,000 pixels" in message


def test_any_exception_pillow_raises_becomes_a_message(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "odd.png")

    def hostile(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(Image, "open", hostile)
    message = checked_file("image.file", "odd.png", tmp_path, Config(root=tmp_path))
    assert 'image.file = "odd.png" is not an image that can be opened (unpack requires a buffer of 4 bytes)' in message


def test_only_the_image_kinds_hotfolder_names_are_opened(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "first.png", format="BMP")  # a BMP renamed .png
    message = checked_file("image.file", "first.png", tmp_path, Config(root=tmp_path))
    assert 'image.file = "first.png" is not an image that can be opened (not a png, jpg or webp image)' in message


def test_a_voice_over_longer_than_the_limit_is_refused_from_its_header_alone(tmp_path: Path, monkeypatch) -> None:
    flac_claiming(tmp_path / "voice.flac", 10 * 3600)

    def no_full_decode(*args, **kwargs):
        raise AssertionError("the whole file was decoded")

    monkeypatch.setattr(media, "probe", no_full_decode)
    message = checked_file("audio.file", "voice.flac", tmp_path, Config(root=tmp_path))
    assert 'audio.file = "voice.flac" is 10 h long' in message
    assert "at most 30 min" in message


def test_validate_refuses_a_real_voice_over_of_31_minutes(root: Root, tmp_path: Path) -> None:
    folder = folder_job(tmp_path, "long", f'prompt = "x"\n{SMALL}[audio]\nfile = "voice.flac"\n')
    make_audio(folder / "voice.flac", 31 * 60, source="anullsrc=r=8000:cl=mono")
    out = validate(root, folder)
    assert out.returncode == 2 and 'audio.file = "voice.flac" is 31 min long' in out.stdout


@pytest.mark.parametrize("text, expected", [
    ("prompt = " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("prompt = \"x\"\nseed = " + "7" * 5000, "5000 digits"),
])
def test_toml_that_breaks_the_parser_is_a_message(root: Root, tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "hostile.toml"
    path.write_text(text)
    assert expected in invalid(path, Config(root=tmp_path))
    out = validate(root, path)
    assert out.returncode == 2 and expected in out.stdout


# --- 12.5 names bounded in bytes ------------------------------------------------------------

CJK80 = "山" * 80  # 240 bytes; "<that>.toml" is 245
CJK100 = "川" * 100


def test_long_multibyte_names_fit_with_what_the_daemon_adds(tmp_path: Path) -> None:
    config = Config(root=tmp_path)
    path = tmp_path / f"{CJK80}.toml"
    path.write_text('prompt = "x"\n')
    assert len(path.name.encode()) == 245
    [spec] = parse(path, config)
    named = tmp_path / "named.toml"
    named.write_text(f'prompt = "x"\n[output]\nname = "{CJK100}"\n')
    [from_output] = parse(named, config)
    batch = tmp_path / "batch.toml"
    batch.write_text(f'[output]\nname = "{CJK100}"\n[[jobs]]\nprompt = "a"\n[[jobs]]\nprompt = "b"\n')
    first, second = parse(batch, config)
    for name in (spec.name, from_output.name, first.name, second.name):
        assert len(name.encode()) <= names.RESULT_NAME_MAX_BYTES
        for added in ("20261121-101500_" + name + " 9999", "." + name + ".voice-over.mp4",
                      "." + name + ".json.4194304.abcdef.tmp"):
            assert len(added.encode()) <= names.NAME_MAX_BYTES, added
    assert CJK80.startswith(spec.name) and CJK100.startswith(from_output.name)
    assert first.name.endswith("-1") and second.name.endswith("-2")
    assert any("shortened" in a for a in from_output.adjustments), from_output.adjustments


@pytest.mark.parametrize("raw, name", [("CON", "_CON"), ("nul", "_nul"), ("com1.final", "_com1.final"),
                                       ("LPT9 ", "_LPT9"), ("CONSOLE", "CONSOLE")])
def test_windows_reserved_names_become_safe(raw: str, name: str) -> None:
    assert safe_name(raw) == name


def test_the_daemon_delivers_long_multibyte_names(root: Root, tmp_path: Path) -> None:
    (root.inbox / f"{CJK80}.toml").write_text(f'prompt = "A lake"\n{SMALL}')
    voice = make_audio(tmp_path / "voice.wav", 0.3)
    folder = root.inbox / ".staging"
    folder.mkdir()
    (folder / "job.toml").write_text(f'prompt = "A river"\n{SMALL}[audio]\nfile = "voice.wav"\n'
                                     f'[output]\nname = "{CJK100}"\n')
    (folder / "voice.wav").write_bytes(voice.read_bytes())
    os.rename(folder, root.inbox / CJK80)  # a job folder with the long name, and a voice-over
    run = root.cli("run", "--once", fake=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert root.failures() == []
    results = root.results()
    assert len(results) == 2
    for result in results:
        meta = root.metadata(result)
        assert (result / meta["outputs"]["video"]).is_file()
        assert len(result.name.encode()) <= names.NAME_MAX_BYTES


# --- 12.12 a web address as an attachment ---------------------------------------------------


def test_a_url_as_an_attachment_is_echoed_as_written(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text('prompt = "x"\n[image]\nfile = "https://example.com/a.png"\n')
    message = invalid(path, Config(root=tmp_path))
    assert 'image.file = "https://example.com/a.png" is a web address' in message
    assert "only files in the job's folder can be used" in message
    assert 'file = "a.png"' in message and "https:/e" not in message


# --- 11.2 files no job can name ---------------------------------------------------------------


@pytest.mark.parametrize("name, words", [
    ("notes.rtf", "TextEdit: Format > Make Plain Text, then save as .txt"),
    ("Notes.RTFD", "TextEdit: Format > Make Plain Text, then save as .txt"),
    ("brief.docx", "Word: save as Plain Text (.txt)"),
    ("brief.doc", "Word: save as Plain Text (.txt)"),
    ("brief.pages", "Pages: File > Export To > Plain Text"),
    ("prompt.md", "Markdown: rename it to .txt if it holds only the prompt"),
    ("brief.pdf", "PDF: copy the prompt into a .txt file"),
    ("settings.json", "write it as a .toml job file"),
    ("clip.mov", "a job is a .toml job file, or a .txt file that holds the prompt"),
])
def test_each_kind_of_document_gets_what_to_do(name: str, words: str) -> None:
    assert words in names.not_a_job_hint(name)
    message = names.not_a_job_message(name, wait_s=300)
    assert message.startswith(f"'{name}' is not a job file") and words in message
    assert "attachment_wait_seconds" not in message  # it never waited


def test_media_that_waited_say_so() -> None:
    message = names.not_a_job_message("song.mp3", wait_s=300)
    assert "no job file in the inbox named it within 300 s (attachment_wait_seconds)" in message


def test_validate_names_what_to_do_with_a_rich_text_file(root: Root, tmp_path: Path) -> None:
    rtf = tmp_path / "notes.rtf"
    rtf.write_text("{\\rtf1 A lake}")
    bundle = tmp_path / "notes.rtfd"
    bundle.mkdir()
    (bundle / "TXT.rtf").write_text("{\\rtf1 A lake}")
    out = validate(root, rtf, bundle)
    assert out.returncode == 2
    assert "notes.rtf: 'notes.rtf' is not a job file" in out.stdout
    assert out.stdout.count("TextEdit: Format > Make Plain Text, then save as .txt") == 2


def test_the_daemon_fails_a_word_document_at_once(root: Root) -> None:
    """attachment_wait_seconds is 300 s: only files that could be attachments wait that long."""
    (root.inbox / "brief.docx").write_bytes(b"PK\x03\x04 not a job")
    run = root.cli("run", "--once", fake=True, timeout=60)
    assert run.returncode == 1
    [failed] = root.failures()
    text = (failed / "error.txt").read_text()
    assert (failed / "brief.docx").is_file() and "'brief.docx' is not a job file" in text
    assert "Word: save as Plain Text (.txt)" in text and "attachment_wait_seconds" not in text
