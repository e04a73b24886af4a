"""Ray's storage on object storage: `s3://bucket/prefix` becomes a path in the bucket and a pyarrow
S3FileSystem aimed at the endpoint the environment names; checked against a real S3-API server
(moto's standalone server on loopback, tests/fixtures/object_store.py)."""

from __future__ import annotations

import pickle

import pytest

from pipeline.storage import describe_storage, ray_storage, read_text, remove_tree, write_text
from spd.errors import SpdError
from tests.fixtures.object_store import S3_ENV, ObjectServer


@pytest.fixture
def s3_environment(s3_server: ObjectServer, monkeypatch: pytest.MonkeyPatch) -> ObjectServer:
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


def test_a_directory_passes_through_without_a_file_system(tmp_path) -> None:
    assert ray_storage(str(tmp_path / "ray_results")) == (str(tmp_path / "ray_results"), None)


def test_s3_storage_is_written_in_the_bucket_at_the_configured_endpoint(
    s3_environment: ObjectServer, s3_bucket: str
) -> None:
    path, fs = ray_storage(f"{s3_bucket}/spd/ray_results/")
    assert path == f"{s3_bucket.removeprefix('s3://')}/spd/ray_results"
    with fs.open_output_stream(f"{path}/run/epoch_0001/state.pt") as f:
        f.write(b"weights")
    assert s3_environment.keys(s3_bucket) == ["spd/ray_results/run/epoch_0001/state.pt"]
    assert s3_environment.read(s3_bucket, "spd/ray_results/run/epoch_0001/state.pt") == b"weights"
    described = describe_storage(f"{s3_bucket}/x")
    assert described == f"{s3_bucket}/x (object storage at {s3_environment.endpoint})"


def test_the_file_system_ray_ships_to_workers_carries_the_endpoint_but_no_secret(
    s3_environment: ObjectServer, s3_bucket: str
) -> None:
    _, fs = ray_storage(f"{s3_bucket}/spd")
    shipped = pickle.dumps(fs)
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"].encode() not in shipped
    assert S3_ENV["AWS_ACCESS_KEY_ID"].encode() not in shipped
    assert s3_environment.endpoint.split("://")[1].encode() in shipped
    # a worker resolves the credentials from its own environment and reaches the same bucket
    assert [i.path for i in pickle.loads(shipped).get_file_info([s3_bucket.removeprefix("s3://")])] == [
        s3_bucket.removeprefix("s3://")
    ]


def test_search_state_round_trips_and_a_fresh_search_empties_its_prefix_in_the_bucket(
    s3_environment: ObjectServer, s3_bucket: str
) -> None:
    write_text(f"{s3_bucket}/tuning/search/spd_search.json", '{"fingerprint": "abc"}')
    write_text(f"{s3_bucket}/tuning/search-trials/trial-1/epoch_0001/state.pt", "w")
    assert read_text(f"{s3_bucket}/tuning/search/spd_search.json") == '{"fingerprint": "abc"}'
    assert read_text(f"{s3_bucket}/tuning/other/spd_search.json") is None
    remove_tree(f"{s3_bucket}/tuning/search-trials")
    remove_tree(f"{s3_bucket}/tuning/never-written")
    # (pyarrow may leave an empty `tuning/` marker object standing for the parent directory)
    files = [k for k in s3_environment.keys(s3_bucket) if not k.endswith("/")]
    assert files == ["tuning/search/spd_search.json"]


@pytest.mark.parametrize(
    ("storage_path", "says"),
    [
        ("s3:///ray_results", "no bucket"),
        ("s3://bucket/ray_results?endpoint_override=127.0.0.1:9000", "AWS_ENDPOINT_URL"),
    ],
)
def test_a_malformed_s3_storage_path_is_refused_naming_it(storage_path: str, says: str) -> None:
    with pytest.raises(SpdError, match="storage path") as err:
        ray_storage(storage_path)
    assert storage_path in str(err.value) and says in str(err.value)


def test_a_malformed_endpoint_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "ftp://127.0.0.1:9000")
    with pytest.raises(SpdError, match="AWS_ENDPOINT_URL_S3"):
        ray_storage("s3://bucket/ray_results")
