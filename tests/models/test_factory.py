"""build_arm: every variant kind, and a ValueError naming the field for bad input."""

from __future__ import annotations

import pytest

from models.arms.base import Arm
from models.arms.factory import KINDS, build_arm
from models.arms.knn import KnnStudent
from models.arms.openai_arm import OpenAIStudentArm, OpenAITeacherArm
from models.arms.recorded import RecordedTeacherArm
from models.dataset import load_split
from models.recorded_server import serve_in_thread


@pytest.fixture(scope="module")
def base_url():
    url, stop = serve_in_thread()
    yield url
    stop()


async def test_teacher_via_base_url_setting(base_url):
    arm = build_arm("teacher", "teacher-v1", {}, openai_base_url=base_url, timeout_s=5)
    assert isinstance(arm, OpenAITeacherArm) and isinstance(arm, Arm)
    assert arm.name == "teacher-v1" and arm.timeout_s == 5 and arm.max_tokens == 1500
    record = load_split("test")[0]
    assert (await arm.predict(record.intent)).config == record.teacher


def test_teacher_config_options():
    arm = build_arm(
        "teacher",
        "t",
        {"model": "gpt-4o-mini", "max_retries": 0, "backoff_s": 0.1, "price_per_mtok": [1, 2]},
        openai_api_key="sk-test",
    )
    assert arm.model == "gpt-4o-mini" and arm.retry.max_retries == 0
    assert arm.price_per_mtok == (1.0, 2.0)
    assert str(arm.client.base_url).startswith("https://api.openai.com")


async def test_openai_student(base_url):
    arm = build_arm("openai_student", "s", {"model": "student", "base_url": base_url})
    assert isinstance(arm, OpenAIStudentArm) and arm.mode == "completions"
    record = load_split("train")[5]
    assert (await arm.predict(record.intent)).config == record.teacher
    chat = build_arm(
        "openai_student", "s", {"model": "m", "mode": "chat"}, openai_base_url=base_url
    )
    assert chat.mode == "chat"


async def test_recorded_and_knn_students(tmp_path):
    record = load_split("test")[1]
    recorded = build_arm("recorded", "rec", {"split": "test"})
    assert isinstance(recorded, RecordedTeacherArm)
    assert (await recorded.predict(record.intent)).config == record.teacher
    assert isinstance(build_arm("recorded", "rec", None), RecordedTeacherArm)

    fitted = build_arm("knn_student", "knn", {"fit": "train"})
    assert isinstance(fitted, KnnStudent) and fitted.name == "knn"
    train_record = load_split("train")[7]
    assert (await fitted.predict(train_record.intent)).config == train_record.teacher
    path = tmp_path / "knn.pkl"
    fitted.save(path)
    loaded = build_arm("knn_student", "knn-loaded", {"path": str(path)})
    assert loaded.name == "knn-loaded"
    assert (await loaded.predict("golden hour")).config == (
        await fitted.predict("golden hour")
    ).config


@pytest.mark.ml
async def test_local_student(tmp_path):
    from models.arms.local import LocalStudentArm
    from tests.models.tiny_models import make_t5

    directory = make_t5(tmp_path / "t5")
    arm = build_arm("local_student", "local", {"path": str(directory), "max_new_tokens": 3})
    assert isinstance(arm, LocalStudentArm) and arm.kind == "seq2seq" and arm.max_new_tokens == 3
    prediction = await arm.predict("golden hour")
    assert set(prediction.raw) == {"adjust", "selective_adjust", "filter"}


@pytest.mark.parametrize(
    ("kind", "config", "kwargs", "field"),
    [
        ("gpt5", {}, {}, "kind"),
        ("teacher", {}, {}, "openai_api_key"),
        ("teacher", {"temperature": 0.7}, {"openai_api_key": "k"}, "config.temperature"),
        ("teacher", {"max_tokens": 0}, {"openai_api_key": "k"}, "config.max_tokens"),
        ("teacher", {"max_tokens": "many"}, {"openai_api_key": "k"}, "config.max_tokens"),
        ("teacher", {"max_retries": True}, {"openai_api_key": "k"}, "config.max_retries"),
        ("teacher", {"price_per_mtok": [1]}, {"openai_api_key": "k"}, "config.price_per_mtok"),
        ("teacher", {"base_url": "ftp://x"}, {}, "config.base_url"),
        ("teacher", {}, {"openai_api_key": "k", "timeout_s": 0}, "timeout_s"),
        ("openai_student", {"base_url": "http://127.0.0.1:1/v1"}, {}, "config.model"),
        ("openai_student", {"model": "m"}, {}, "config.base_url"),
        (
            "openai_student",
            {"model": "m", "base_url": "http://h/v1", "mode": "x"},
            {},
            "config.mode",
        ),
        ("local_student", {}, {}, "config.path"),
        ("local_student", {"path": "/nonexistent/dir"}, {}, "config.path"),
        ("recorded", {"split": "dev"}, {}, "config.split"),
        ("knn_student", {}, {}, "config.path"),
        ("knn_student", {"path": "a", "fit": "train"}, {}, "config.path"),
        ("knn_student", {"fit": "test"}, {}, "config.fit"),
        ("knn_student", {"path": "/nonexistent.pkl"}, {}, "config.path"),
        ("recorded", [1, 2], {}, "config"),
    ],
)
def test_bad_input_names_the_field(kind, config, kwargs, field):
    with pytest.raises(ValueError) as info:
        build_arm(kind, "arm", config, **kwargs)
    assert str(info.value).startswith(f"{field}: "), str(info.value)


def test_local_student_bad_device_and_kind(tmp_path):
    for config, field in (
        ({"path": str(tmp_path), "device": "tpu"}, "config.device"),
        ({"path": str(tmp_path), "kind": "bert"}, "config.kind"),
        ({"path": str(tmp_path)}, "config.path"),  # a directory without a model
    ):
        with pytest.raises(ValueError) as info:
            build_arm("local_student", "local", config)
        assert str(info.value).startswith(f"{field}: "), str(info.value)


def test_unreadable_knn_pickle(tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="^config.path: cannot load"):
        build_arm("knn_student", "knn", {"path": str(path)})


def test_empty_name_and_kinds_list():
    with pytest.raises(ValueError, match="^name: "):
        build_arm("recorded", " ", {})
    assert set(KINDS) == {"teacher", "openai_student", "local_student", "recorded", "knn_student"}
