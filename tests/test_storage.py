"""s3:// URIs through boto3 against a real S3 endpoint (moto_server): models and weights
as sources, job outputs published, and each failure named with its URI and reason."""

import json
import urllib.request
from pathlib import Path

import pytest
import torch

from pipeline import flows
from pipeline.records import storage
from pipeline.sources.models import ModelSourceError, build_model
from pipeline.spec import parse
from tests import servers
from tests.helpers import tiny_cnn

BUCKET = "compressflow-storage"
SECRET = servers.AWS_ENV["AWS_SECRET_ACCESS_KEY"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    # Its own endpoint: the access-denied test switches authentication on for all of it.
    with servers.moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint


@pytest.fixture()
def aws(s3, monkeypatch, tmp_path):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    return s3


def test_a_file_goes_up_and_comes_back(aws, tmp_path):
    local = tmp_path / "a.txt"
    local.write_text("hello")
    uri = storage.join(f"s3://{BUCKET}", "dir", "a.txt")
    assert storage.put(local, uri) == f"s3://{BUCKET}/dir/a.txt"
    fetched = storage.fetch(uri, tmp_path / "cache")
    assert fetched.read_text() == "hello" and fetched != local


def test_a_model_file_and_weights_load_from_s3(aws, tmp_path):
    model = tiny_cnn()
    torch.nn.init.constant_(model.fc.bias, 0.25)
    torch.save(model, tmp_path / "model.pt")  # a pickled module: needs the trust flag
    storage.put(tmp_path / "model.pt", f"s3://{BUCKET}/models/model.pt")
    loaded, trained = build_model(f"s3://{BUCKET}/models/model.pt", 10, 1, trust_pickled=True)
    assert trained and torch.equal(loaded.fc.bias, model.fc.bias)

    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / "w.safetensors")
    storage.put(tmp_path / "w.safetensors", f"s3://{BUCKET}/weights/w.safetensors")
    built, trained = build_model(
        "tests.helpers:tiny_cnn", 10, 1, weights=f"s3://{BUCKET}/weights/w.safetensors"
    )
    assert trained and torch.equal(built.fc.bias, model.fc.bias)


def test_a_missing_key_or_bucket_is_named(aws, tmp_path):
    with pytest.raises(storage.StorageError) as err:
        storage.fetch(f"s3://{BUCKET}/no/such.pt", tmp_path)
    assert str(err.value) == f"cannot read s3://{BUCKET}/no/such.pt: no object at that key"
    with pytest.raises(storage.StorageError) as err:
        storage.fetch("s3://no-such-bucket/model.pt", tmp_path)
    missing = "the bucket 'no-such-bucket' does not exist"
    assert str(err.value) == f"cannot read s3://no-such-bucket/model.pt: {missing}"
    (tmp_path / "x").write_text("x")
    with pytest.raises(storage.StorageError, match="write s3://no-such-bucket/x: the bucket does"):
        storage.put(tmp_path / "x", "s3://no-such-bucket/x")
    with pytest.raises(ModelSourceError, match=f"s3://{BUCKET}/gone.pt: no object at that key"):
        build_model(f"s3://{BUCKET}/gone.pt", 10, 1)


def test_denied_access_is_named_and_no_secret_is_shown(s3, monkeypatch, tmp_path):
    import boto3

    s3.client().put_object(Bucket=BUCKET, Key="private/model.pt", Body=b"x")
    iam = boto3.client("iam", **_admin(s3))
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]  # no policy: may do nothing
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    (tmp_path / "x").write_text("x")
    _authentication(s3, on=True)
    try:
        with pytest.raises(storage.StorageError) as read:
            storage.fetch(f"s3://{BUCKET}/private/model.pt", tmp_path)
        with pytest.raises(storage.StorageError) as write:
            storage.put(tmp_path / "x", f"s3://{BUCKET}/private/x")
    finally:
        _authentication(s3, on=False)
    assert str(read.value).startswith(f"cannot read s3://{BUCKET}/private/model.pt: access denied")
    assert str(write.value).startswith(f"cannot write s3://{BUCKET}/private/x: access denied")
    for err in (read.value, write.value):
        assert key["SecretAccessKey"] not in str(err) and SECRET not in str(err)


def _admin(s3):
    return {
        "endpoint_url": s3.endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": servers.AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": SECRET,
    }


def _authentication(s3, on: bool) -> None:
    """moto checks IAM permissions only when told to (its reset-auth endpoint)."""
    count = b"0" if on else b"inf"
    request = urllib.request.Request(
        f"{s3.endpoint}/moto-api/reset-auth",
        data=count,
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request, timeout=10).close()


def test_no_credentials_or_no_endpoint_is_said_plainly(aws, monkeypatch, tmp_path):
    from tests.servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(storage.StorageError, match="cannot reach the S3 endpoint http://127"):
        storage.fetch(f"s3://{BUCKET}/a.pt", tmp_path)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(storage.StorageError, match="no AWS credentials found"):
        storage.fetch(f"s3://{BUCKET}/a.pt", tmp_path)


class RecordingTracker:
    def __init__(self):
        self.logged = []

    def log_file(self, run_id, path, folder=None):
        self.logged.append((run_id, json.loads(Path(path).read_text())))


def test_publishing_uploads_the_deliverables_and_renames_them_in_the_summary(aws, tmp_path):
    spec = parse({"name": "pub", "target": {"speedup": 2.0}, "output": f"s3://{BUCKET}/out"})
    with flows.staged_output(spec) as out:
        assert out.name == "pub" and out.is_dir() and "s3:" not in str(out)
        for rel in ("best/model.pt", "best/model.onnx", "best/model.packed", "baseline/model.onnx"):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(rel.encode())
        (out / "rounds").mkdir()
        (out / "rounds" / "r1.pt").write_bytes(b"not a deliverable")
        (out / "summary.json").write_text("{}")
        summary = {
            "best": {"deployable": str(out / "best/model.packed")},
            "artifacts": {
                "baseline_onnx": str(out / "baseline/model.onnx"),
                "best_onnx": str(out / "best/model.onnx"),
                "best_model": str(out / "best/model.pt"),
            },
        }
        tracker = RecordingTracker()
        published = flows.publish(spec, summary, out, tracker, "parent-1")
    assert not out.exists()  # the staging folder goes with the job
    prefix = f"s3://{BUCKET}/out/pub/parent-1/"  # each job run its own folder
    assert published["artifacts"] == {
        "baseline_onnx": prefix + "baseline/model.onnx",
        "best_onnx": prefix + "best/model.onnx",
        "best_model": prefix + "best/model.pt",
    }
    assert published["best"]["deployable"] == prefix + "best/model.packed"
    keys = set(aws.keys(BUCKET, "out/pub/"))
    assert keys == {
        "out/pub/latest/summary.json",
        "out/pub/parent-1/summary.json",
        "out/pub/parent-1/best/model.pt",
        "out/pub/parent-1/best/model.onnx",
        "out/pub/parent-1/best/model.packed",
        "out/pub/parent-1/baseline/model.onnx",
    }
    for key in ("out/pub/parent-1/summary.json", "out/pub/latest/summary.json"):
        body = aws.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert json.loads(body) == published == tracker.logged[0][1]  # MLflow's copy agrees
