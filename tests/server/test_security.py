"""Access control on a real server: TLS, client certificates (mTLS), bearer tokens with rotation, the plaintext
health-only port for probes, reflection off, and where /metrics listens. Certificates come from a throwaway CA
made by the test (tests/server/certs.py)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.conftest import run_cli
from tests.harness import (
    ROOT,
    ServerProcess,
    free_port,
    health_status,
    serve_argv,
    serving,
    vaeserve_process,
    wait_until,
)
from vaeserve.client.api import AsyncVaeClient, VaeClient
from vaeserve.protos.vae.v1 import vae_pb2, vae_pb2_grpc

from .certs import CertificateAuthority, Pair


@dataclass
class Pki:
    ca: CertificateAuthority
    server: Pair
    client: Pair
    stranger: Pair  # a client certificate from a CA the server does not trust
    tokens: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority(folder), CertificateAuthority(folder, "other CA")
    tokens = folder / "tokens"
    tokens.write_text("# accepted bearer tokens\nalpha-token\n\n  beta-token  \n")
    return Pki(ca, ca.issue("server", server=True), ca.issue("client", server=False),
               other.issue("stranger", server=False), tokens)  # fmt: skip


def tls_flags(pki: Pki, tokens: Path | None = None) -> tuple[str, ...]:
    flags = ("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))
    return (*flags, "--auth-token-file", str(tokens)) if tokens else flags


def client(server: ServerProcess, pki: Pki, token: str | None = None, cert: Pair | None = None) -> VaeClient:
    """A TLS client of `server` by the name its certificate holds (localhost)."""
    return VaeClient(f"localhost:{server.port}", timeout=10, tls_ca=pki.ca.pem, token=token,
                     tls_cert=cert and cert.cert, tls_key=cert and cert.key)  # fmt: skip


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def secured(model_repo: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """TLS and tokens on the gRPC port, plaintext health on its own port, no reflection."""
    log = tmp_path_factory.mktemp("secured") / "serve.log"
    with serving(model_repo, log, *tls_flags(pki, pki.tokens), "--no-reflection", with_health_port=True) as server:
        yield server


def test_plaintext_to_a_tls_port_fails(secured: ServerProcess) -> None:
    with VaeClient(secured.target, timeout=10) as plain:
        assert code_of(plain.info) == grpc.StatusCode.UNAVAILABLE


def test_calls_need_an_accepted_token_and_refusals_are_counted(secured: ServerProcess, pki: Pki) -> None:
    unauthenticated = 'vaeserve_requests_total{code="UNAUTHENTICATED",method="GetModelInfo"}'
    before = secured.metric(unauthenticated, 0.0)
    for token in (None, "wrong-token", "alpha-token-but-longer", "Alpha-Token"):
        with client(secured, pki, token) as c, pytest.raises(grpc.RpcError) as refused:
            c.info()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in refused.value.details()
    assert secured.metric(unauthenticated) - before == 4
    for token in ("alpha-token", "beta-token"):  # every line of the file, stripped; comments and blanks skipped
        with client(secured, pki, token) as c:
            assert c.info().name == "vae" and c.sample(2, seed=0)[0].shape == (2, 1, 8, 8)
    with grpc.secure_channel(f"localhost:{secured.port}", grpc.ssl_channel_credentials(pki.ca.pem.read_bytes())) as ch:
        call = vae_pb2_grpc.VaeServiceStub(ch).GetModelInfo
        lowercase = (("authorization", "bearer alpha-token"),)  # the scheme is case-insensitive (RFC 7235)
        assert call(vae_pb2.GetModelInfoRequest(), metadata=lowercase, timeout=10).name == "vae"
        basic = (("authorization", "Basic alpha-token"),)
        assert code_of(lambda: call(vae_pb2.GetModelInfoRequest(), metadata=basic, timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )


def test_health_stays_open_and_the_health_port_serves_health_only(secured: ServerProcess, pki: Pki) -> None:
    health_target = f"127.0.0.1:{secured.health_port}"
    assert health_status(health_target) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(health_target, "vae.v1.VaeService") == health_pb2.HealthCheckResponse.SERVING
    with VaeClient(health_target, timeout=10, token="alpha-token") as plain:
        assert code_of(plain.info) == grpc.StatusCode.UNIMPLEMENTED  # the model is not on the plaintext port
    credentials = grpc.ssl_channel_credentials(pki.ca.pem.read_bytes())
    with grpc.secure_channel(f"localhost:{secured.port}", credentials) as channel:  # no token: health is open
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_can_be_turned_off(secured: ServerProcess, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(pki.ca.pem.read_bytes())
    with grpc.secure_channel(f"localhost:{secured.port}", credentials) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as off:
            list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_needs_the_token_when_tokens_are_on(server: ServerProcess, model_repo: Path, pki: Pki,
                                                      tmp_path: Path) -> None:  # fmt: skip
    """grpc's own reflection client against a TLS server with tokens and reflection on: refused without a token,
    answered with one; a server without tokens answers anyone."""
    with serving(model_repo, tmp_path / "serve.log", *tls_flags(pki, pki.tokens), with_health_port=True) as secured:
        credentials = grpc.ssl_channel_credentials(pki.ca.pem.read_bytes())
        target = f"localhost:{secured.port}"
        for token in (None, "wrong-token"):
            creds = credentials if token is None else grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token))  # fmt: skip
            with grpc.secure_channel(target, creds) as channel, pytest.raises(grpc.RpcError) as refused:
                ProtoReflectionDescriptorDatabase(channel).get_services()
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, token
            assert "bearer token" in refused.value.details()
        creds = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials("alpha-token"))
        with grpc.secure_channel(target, creds) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            assert "vae.v1.VaeService" in database.get_services()
            methods = DescriptorPool(database).FindServiceByName("vae.v1.VaeService").methods_by_name
            assert "Sample" in methods
    with grpc.insecure_channel(server.target) as channel:  # no tokens: reflection for anyone, as before
        assert "inference.GRPCInferenceService" in ProtoReflectionDescriptorDatabase(channel).get_services()


def test_the_client_cli_speaks_tls_and_sends_the_token(secured: ServerProcess, pki: Pki, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("beta-token\n")
    target = f"localhost:{secured.port}"
    run_cli("info", "--target", target, "--tls-ca", str(pki.ca.pem), "--token-file", str(token_file))
    env = {**os.environ, "VAESERVE_TOKEN": "alpha-token"}
    argv = [sys.executable, "-m", "vaeserve.cli", "sample", "--target", target, "--tls-ca", str(pki.ca.pem),
            "--n", "4", "--out", str(tmp_path / "s.png")]  # fmt: skip
    assert subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60).returncode == 0
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**env, "VAESERVE_TOKEN": "x"})
    assert refused.returncode == 2 and "UNAUTHENTICATED" in refused.stderr and "Traceback" not in refused.stderr


def test_the_async_client_and_the_explorer_speak_tls_and_send_the_token(
    secured: ServerProcess, pki: Pki, tmp_path: Path
) -> None:
    target = f"localhost:{secured.port}"

    async def sample(token: str) -> grpc.StatusCode:
        async with AsyncVaeClient(target, timeout=10, tls_ca=pki.ca.pem, token=token) as aio:
            try:
                images, _ = await aio.sample(2, seed=0)
            except grpc.RpcError as exc:
                return exc.code()
        assert images.shape == (2, 1, 8, 8)
        return grpc.StatusCode.OK

    assert asyncio.run(sample("alpha-token")) == grpc.StatusCode.OK
    assert asyncio.run(sample("wrong")) == grpc.StatusCode.UNAUTHENTICATED

    # `vaeserve explore` takes the client commands' flags: its page's calls go over TLS with the token.
    from vaeserve.cli import build_parser
    from vaeserve.client.cli import connect
    from vaeserve.client.explore.app import Explorer

    token_file = tmp_path / "token"
    token_file.write_text("beta-token\n")
    args = build_parser().parse_args(
        ["explore", "--target", target, "--tls-ca", str(pki.ca.pem), "--token-file", str(token_file)]
    )
    with connect(args) as client:
        explorer = Explorer.connect(client, scale=1)
        assert explorer.sample({"seed": 0, "temperature": 1.0, "n": 2})["image"].startswith("data:image/png")
    args.token_file = None
    with connect(args) as client, pytest.raises(grpc.RpcError) as refused:
        Explorer.connect(client, scale=1)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_readme_tls_example_runs_as_written(secured: ServerProcess, pki: Pki, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    (example,) = re.findall(r"<!-- example: tls -->\n```python\n(.*?)```", readme, re.S)
    (tmp_path / "certs").mkdir()
    shutil.copy(pki.ca.pem, tmp_path / "certs" / "ca.crt")
    (tmp_path / "certs" / "client.token").write_text("beta-token\n")  # as dev-certs.sh writes it
    example = example.replace("localhost:50051", f"localhost:{secured.port}")
    ran = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "vae\n"), ran.stderr


def test_tokens_rotate_without_a_restart(model_repo: Path, pki: Pki, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("first\n")
    with serving(model_repo, tmp_path / "serve.log", *tls_flags(pki, tokens), with_health_port=True) as server:

        def accepted(token: str) -> bool:
            with client(server, pki, token) as c:
                return code_of(c.info) == grpc.StatusCode.OK

        assert accepted("first") and not accepted("second")
        # As the kubelet updates a mounted Secret: a new file renamed over the old one; the server notices.
        staged = tmp_path / "tokens.new"
        staged.write_text("second\n")
        staged.replace(tokens)
        wait_until(lambda: accepted("second"), "the rotated token to be accepted", poll=0.05)
        assert not accepted("first")
        # SIGHUP re-reads at once; an empty file revokes every token (fail closed), and so does a deleted one.
        failures = "vaeserve_auth_reload_failures_total"
        assert server.metric("vaeserve_auth_tokens") == 1 and server.metric(failures) == 0
        tokens.write_text("third\n")
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: accepted("third"), "the token read on SIGHUP", poll=0.05)
        tokens.write_text("\n")
        server.send_signal(signal.SIGHUP)
        wait_until(lambda: server.metric(failures) == 1, "the empty file to be reported", poll=0.05)
        assert not accepted("third") and server.metric("vaeserve_auth_tokens") == 0
        tokens.write_text("fourth\n")  # restored: the poll notices
        wait_until(lambda: accepted("fourth"), "the restored file's token to be accepted", poll=0.05)
        tokens.unlink()
        wait_until(lambda: server.metric(failures) == 2, "the deleted file to be reported", poll=0.05)
        assert not accepted("fourth") and server.metric("vaeserve_auth_tokens") == 0
    assert server.returncode == 0
    log = server.output()
    assert "SIGHUP: re-reading --auth-token-file" in log
    assert log.count("no token is accepted until it holds one") == 2  # one ERROR line per change


def test_client_certificates_are_required_with_a_client_ca(model_repo: Path, pki: Pki, tmp_path: Path) -> None:
    flags = (*tls_flags(pki), "--tls-client-ca", str(pki.ca.pem))
    with serving(model_repo, tmp_path / "serve.log", *flags, with_health_port=True) as server:
        with client(server, pki) as anonymous:
            assert code_of(anonymous.info) == grpc.StatusCode.UNAVAILABLE  # the handshake fails
        with client(server, pki, cert=pki.stranger) as stranger:
            assert code_of(stranger.info) == grpc.StatusCode.UNAVAILABLE
        with client(server, pki, cert=pki.client) as known:
            assert known.info().name == "vae"
    assert "TLS with client certificates" in server.output()


def test_metrics_listen_on_the_metrics_host(model_repo: Path, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    with serving(model_repo, tmp_path / "serve.log", "--metrics-host", "127.0.0.2") as server:
        with urllib.request.urlopen(f"http://127.0.0.2:{server.metrics_port}/metrics", timeout=10) as r:
            assert b"vaeserve_model_info" in r.read()
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    assert "(unauthenticated)" in server.output()


def test_reuse_port_refuses_a_sibling_with_other_security_settings(model_repo: Path, pki: Pki, tmp_path: Path) -> None:
    """A plaintext, token-less --reuse-port process beside a TLS one with tokens would take a share of its clients:
    refused in one line before anything loads; once the secured one is gone (even killed), the port is free."""
    port = free_port()
    weaker = serve_argv(model_repo, "--reuse-port", port=port, metrics_port=0)
    secured = vaeserve_process(model_repo, tmp_path / "secured.log", *tls_flags(pki, pki.tokens), "--reuse-port",
                               port=port, with_health_port=True)  # fmt: skip
    with secured:
        result = subprocess.run(weaker, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(
            f"vaeserve serve: error: --reuse-port: port {port} is served by vaeserve processes "
            f"with other security settings (--tls-cert {pki.server.cert.resolve()}, "
            f"--auth-token-file {pki.tokens.resolve()}; this one: plaintext, no tokens)"
        ), line
        other_tokens = tmp_path / "other-tokens"
        other_tokens.write_text("other-token\n")
        result = subprocess.run(serve_argv(model_repo, *tls_flags(pki, other_tokens), "--reuse-port", port=port,
                                           metrics_port=0), capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 2 and "other security settings" in result.stderr, result.stderr
        secured.process.kill()  # no drain, no clean-up: the kernel releases its claim on the port
        secured.wait()
    with serving(model_repo, tmp_path / "plain.log", "--reuse-port", port=port) as plain, VaeClient(plain.target) as c:
        assert c.info().name == "vae"


BAD_SECURITY_FLAGS = [
    (("--tls-cert", "cert.pem"), "--tls-cert and --tls-key: give both"),
    (("--tls-client-ca", "ca.pem"), "--tls-client-ca: client certificates need TLS"),
    (("--tls-cert", "missing.pem", "--tls-key", "missing.key"), "--tls-cert missing.pem: cannot read it"),
    (("--tls-cert", "tokens", "--tls-key", "tokens"), "--tls-cert tokens: not a PEM file"),
    (("--auth-token-file", "missing"), "--auth-token-file missing: cannot read it"),
    (("--auth-token-file", "empty"), "--auth-token-file empty: holds no token"),
    (("--health-port", "PORT"), "--health-port: PORT is already --port or --metrics-port"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_SECURITY_FLAGS)
def test_bad_security_flags_are_one_line_naming_the_flag(
    model_repo: Path, tmp_path: Path, flags: tuple[str, ...], message: str
) -> None:
    (tmp_path / "tokens").write_text("a-token\n")
    (tmp_path / "empty").write_text("# none\n")
    port = free_port()
    flags = tuple(str(port) if f == "PORT" else f for f in flags)
    argv = serve_argv(model_repo, *flags, port=port, metrics_port=0)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    message = message.replace("PORT", str(port))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()  # found before the model is even loaded: the only line
    assert line.startswith(f"vaeserve serve: error: {message}"), line
