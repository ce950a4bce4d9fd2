"""froster export: a run's student as an open_clip local-dir model that open_clip and stage one load, giving the same
embeddings as the student's frame-wise forward; and pipeline.checkpoints.load_student."""

from __future__ import annotations

import json
import logging

import open_clip
import pytest
import torch

from froster.pipeline import checkpoints as ck
from froster.pipeline.errors import ConfigError, FrosterError
from froster.pipeline.students import create_student
from froster.pipeline.teacher import TeacherSpec, load_clip, save_local_dir
from froster.stages.export import EXPORT_INFO, ExportConfig, run

T = 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny teacher saved as a local folder, and a run directory whose final.pt and averaged.pt hold a vclip
    student with weights moved away from the teacher's (each differently)."""
    base = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    tiny = load_clip(TeacherSpec("froster-test-tiny", allow_random=True))
    folder = save_local_dir(tiny.model, tiny.model_config, base / "teacher")
    teacher = load_clip(TeacherSpec(f"local-dir:{folder}"))
    run_dir = base / "run"
    g = torch.Generator().manual_seed(1)
    for name, kind in (("final.pt", "last"), ("averaged.pt", "averaged")):
        clip = load_clip(TeacherSpec(f"local-dir:{folder}")).model
        student = create_student("vclip", clip, T, edge="zero")
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        meta = ck.make_meta(student="vclip", num_frames=T, options={"edge": "zero"}, teacher=teacher.provenance,
                            vocabulary=["clap", "jump"], prompt_names=["clap", "jump"], epoch=3, kind=kind)
        ck.save_checkpoint(run_dir / name, ck.weights_payload(student.state_dict(), {"vision": {}, "text": {}}, meta))
    return {"base": base, "teacher": folder, "run": run_dir}


def test_load_student_rebuilds_the_saved_weights(trained):
    student, meta = ck.load_student(trained["run"] / "averaged.pt")
    saved = ck.load_checkpoint(trained["run"] / "averaged.pt")["model"]
    assert meta["kind"] == "averaged" and meta["student"]["options"] == {"edge": "zero"}
    assert type(student).__name__ == "VClipStudent" and not student.training
    assert all(torch.equal(v, saved[k]) for k, v in student.state_dict().items())


def test_export_reloads_in_open_clip_with_the_same_embeddings(trained, caplog):
    out = trained["base"] / "exported"
    with caplog.at_level(logging.INFO):
        assert run(ExportConfig(run=trained["run"], out=out)) == out
    assert "exported as frame-wise CLIP" in caplog.text
    info = json.loads((out / EXPORT_INFO).read_text())
    assert info["kind"] == "averaged" and info["source"].endswith("averaged.pt") and info["frame_wise"]

    student, _ = ck.load_student(trained["run"] / "averaged.pt")
    framewise = create_student("clip", student.clip, T)  # the student's frame-wise forward
    model = open_clip.create_model(f"local-dir:{out}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    frames = torch.randn(2, T, 3, 32, 32)  # [B, T, 3, H, W]
    tokens = tokenizer(["a video of clapping.", "jump"])
    with torch.no_grad():
        want_img = framewise.encode_frames(frames)  # [B, T, D]
        got_img = model.encode_image(frames.flatten(0, 1)).reshape(want_img.shape)
        want_txt, got_txt = student.encode_text(tokens), model.encode_text(tokens)
    torch.testing.assert_close(got_img, want_img, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_txt, want_txt, rtol=0, atol=1e-5)
    # and the exported model is not the teacher: the student's weights went out
    teacher = open_clip.create_model(f"local-dir:{trained['teacher']}").eval()
    with torch.no_grad():
        assert (teacher.encode_text(tokens) - got_txt).abs().max() > 1e-3

    # stage one and evaluate load models through load_clip: the folder is a valid teacher too
    loaded = load_clip(TeacherSpec(f"local-dir:{out}"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_text(tokens), want_txt, rtol=0, atol=1e-5)
    assert loaded.image_size == 32


def test_export_picks_final_without_average_and_refuses_clearly(trained, tmp_path):
    out = run(ExportConfig(run=trained["run"], out=tmp_path / "last", checkpoint="last"))
    assert json.loads((out / EXPORT_INFO).read_text())["kind"] == "last"
    with pytest.raises(FrosterError, match="not empty.*--overwrite"):
        run(ExportConfig(run=trained["run"], out=out))
    run(ExportConfig(run=trained["run"] / "final.pt", out=out, overwrite=True))
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(FrosterError, match="has not finished.*--resume"):
        run(ExportConfig(run=tmp_path / "unfinished", out=tmp_path / "x"))
    with pytest.raises(ConfigError, match="--checkpoint"):
        ExportConfig(run=trained["run"], out=tmp_path / "x", checkpoint="best")
