"""Presigning checked against AWS's published example and botocore; retry and error mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from libcloud.common.types import InvalidCredsError, LibcloudError

from cloud_adapters.stores.errors import Where, translate
from cloud_adapters.stores.retry import RetryPolicy, call_with_retry
from cloud_adapters.stores.sigv4 import presign_get
from fedge.errors import CloudError

# "Authenticating Requests: Using Query Parameters", AWS S3 API reference
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_sigv4_matches_the_aws_documentation_example() -> None:
    url = presign_get(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region="us-east-1",
        host="examplebucket.s3.amazonaws.com",
        path="/test.txt",
        expires_s=86400,
        now=datetime(2013, 5, 24, tzinfo=UTC),
    )
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Signature"] == [
        "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
    ]
    assert url.startswith("https://examplebucket.s3.amazonaws.com/test.txt?")


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("127.0.0.1:9000", "sentiment/1.0+rc1/notes v2.txt"),
        ("s3.eu-west-1.amazonaws.com", "a/b~c/d_e-f.onnx"),
    ],
)
def test_sigv4_agrees_with_botocore_on_ports_and_escaped_names(host: str, key: str) -> None:
    botocore = pytest.importorskip("botocore")
    from botocore.auth import S3SigV4QueryAuth  # type: ignore[import-untyped]
    from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
    from botocore.credentials import Credentials  # type: ignore[import-untyped]

    assert botocore.__version__
    request = AWSRequest(method="GET", url=f"http://{host}/bucket/{quote(key)}")
    signer = S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "eu-west-1", 900)
    signer.add_auth(request)
    theirs = parse_qs(urlsplit(request.url).query)
    moment = datetime.strptime(theirs["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    ours = presign_get(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region="eu-west-1",
        host=host,
        path=f"/bucket/{key}",
        expires_s=900,
        secure=False,
        now=moment,
    )
    assert urlsplit(ours).path == urlsplit(request.url).path
    assert parse_qs(urlsplit(ours).query)["X-Amz-Signature"] == theirs["X-Amz-Signature"]


def test_sigv4_refuses_lifetimes_s3_would_refuse() -> None:
    with pytest.raises(ValueError, match="between 1 and 604800"):
        presign_get(
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            region="r",
            host="h",
            path="/b/k",
            expires_s=8 * 86400,
        )


def _flaky(failures: int, *, transient: bool) -> tuple[list[int], object]:
    calls: list[int] = []

    def operation() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise CloudError("boom", provider="t (s3)", container="c", transient=transient)
        return "done"

    return calls, operation


def test_transient_errors_are_retried_with_growing_waits() -> None:
    calls, operation = _flaky(3, transient=True)
    waits: list[float] = []
    policy = RetryPolicy(attempts=4, base_delay_s=0.5, factor=2, max_delay_s=1.5)
    assert call_with_retry(operation, policy, describe="op", sleep=waits.append) == "done"  # type: ignore[arg-type]
    assert (len(calls), waits) == (4, [0.5, 1.0, 1.5])


def test_the_last_transient_failure_says_how_often_it_was_tried() -> None:
    calls, operation = _flaky(9, transient=True)
    with pytest.raises(CloudError, match=r"^t \(s3\): c: boom \(after 3 attempts\)$") as failed:
        call_with_retry(operation, RetryPolicy(attempts=3), describe="op", sleep=lambda _: None)  # type: ignore[arg-type]
    assert failed.value.transient and len(calls) == 3


def test_permanent_errors_are_not_retried() -> None:
    calls, operation = _flaky(1, transient=False)
    with pytest.raises(CloudError, match="boom$"):
        call_with_retry(operation, RetryPolicy(), describe="op", sleep=lambda _: None)  # type: ignore[arg-type]
    assert len(calls) == 1


def test_libcloud_errors_become_located_cloud_errors_without_the_body() -> None:
    where = Where(provider="eu-s3 (s3)", container="bucket")
    body = (
        "<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided "
        "does not exist in our records.</Message><AWSAccessKeyId>AKIASECRETISH</AWSAccessKeyId>"
        "</Error>"
    )
    creds = translate(InvalidCredsError(body), where, object_name="a/1/m.onnx")
    assert str(creds).startswith("eu-s3 (s3): bucket/a/1/m.onnx: authentication failed")
    assert "AKIASECRETISH" not in str(creds) and not creds.transient
    server = translate(LibcloudError("Unknown error. Status code: 503"), where)
    assert server.transient and "Status code: 503" in str(server)
    refused = translate(
        ConnectionRefusedError(111, "Connection refused"), where, endpoint="http://h:1"
    )
    assert refused.transient and "endpoint http://h:1 unreachable: connection refused" in str(
        refused
    )
