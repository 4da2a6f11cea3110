"""The explorer's JSON API: equal to the CLI's --json, and safe against bad input."""

import http.client
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest

from diffperf.cli import main
from diffperf.explore import api, make_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    srv = make_server("127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _get(port, target, *, method="GET", host=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Host": host or f"127.0.0.1:{port}"}
    conn.request(method, target, headers=headers)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def _cli_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


# (endpoint, query fields); the CLI gets the same fields as --flags
CASES = [
    ("train", [("hardware", "dgx_h100"), ("model", "llama3_8b"), ("gpus", "16"),
               ("tp", "4"), ("pp", "2"), ("global_batch", "64"),
               ("microbatch", "2")]),
    ("train", [("hardware", "H100-SXM-80GB"), ("model", "llama3_8b"), ("gpus", "8"),
               ("tp", "8"), ("recompute", "selective"), ("dtype", "fp8"),
               ("sequence_parallel", "false"), ("set", "chip.hbm_bandwidth=5e12"),
               ("set", "scale_up.bandwidth=9e11"), ("emit", "megatron")]),
    ("infer", [("hardware", "dgx_h100"), ("model", "llama3_8b"), ("gpus", "8"),
               ("tp", "4"), ("batch", "32"), ("input_len", "2048"),
               ("output_len", "256"), ("graphs", "true"), ("kv_dtype", "fp8")]),
    ("infer", [("hardware", "dgx_h100"), ("model", "llama3_8b"), ("gpus", "4"),
               ("tp", "2"), ("batch", "8"), ("disaggregate", "2:2"),
               ("ttft_slo", "0.5"), ("emit", "sglang")]),
]  # fmt: skip


def _argv(endpoint, fields):
    argv = [endpoint, "--json"]
    for k, v in fields:
        flag = "--" + k.replace("_", "-")
        if v in ("true", "false"):
            if v == "true":
                argv.append(flag)
            elif k == "sequence_parallel":
                argv.append("--no-sequence-parallel")
        else:
            argv += [flag, v]
    return argv


@pytest.mark.parametrize("endpoint, fields", CASES)
def test_api_answers_like_the_cli(server, capsys, endpoint, fields):
    status, body = _get(server, f"/api/{endpoint}?{urllib.parse.urlencode(fields)}")
    assert status == 200, body
    assert json.loads(body) == _cli_json(capsys, _argv(endpoint, fields))


BAD = [
    ("hardware=../../../etc/passwd&model=llama3_8b&gpus=8", "bundled hardware name"),
    ("hardware=/etc/hosts&model=llama3_8b&gpus=8", "bundled hardware name"),
    ("hardware=dgx_h100&model=..%2F..%2Fetc%2Fpasswd&gpus=8", "bundled workloads"),
    ("hardware=hardware%2Fdgx_h100.toml&model=llama3_8b&gpus=8", "paths are refused"),
    ("hardware=dgx_h100.toml&model=llama3_8b&gpus=8", "paths are refused"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&draft_model=..%2Fx", "bundled"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=99999999999999", "at most 10000000"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&tp=1e400", "finite number"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&ep_overlap=nan", "finite number"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&set=chip.hbm_bandwidth%3Dnan",
     "finite number"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&set=chip.hbm_bandwidth%3D1e300",
     "at most 1e+30"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&set=..%2F..%3D1", "not a hardware leaf"),
    ("hardware=dgx_h100&model=llama3_8b", "required: --gpus"),
    ("model=llama3_8b&gpus=8", "required: --hardware"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&warp=9", "unknown query field 'warp'"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&gpus=16", "more than once"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&tp=3", "must be a multiple"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&tp=x", "must be an integer"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=-8", "must be >= 1"),
    ("hardware=dgx_h100&model=llama3_8b&gpus=8&recompute=some", "invalid choice"),
    ("hardware=dgx_h100&&model", "malformed query"),
    ("hardware=" + "a" * 300 + "&model=llama3_8b&gpus=8", "longer than 200"),
]  # fmt: skip


@pytest.mark.parametrize("query, message", BAD)
def test_bad_input_is_a_400_with_one_line(server, query, message):
    endpoint = "infer" if "draft_model" in query else "train"
    status, body = _get(server, f"/api/{endpoint}?" + query)
    assert status == 400, body
    out = json.loads(body)
    assert set(out) == {"error"} and message in out["error"], out
    assert "\n" not in out["error"] and "Traceback" not in body.decode()


def test_requests_outside_the_api(server):
    assert _get(server, "/api/train?" + "x=1&" * 2000)[0] == 414  # request too long
    assert _get(server, "/api/train", method="POST")[0] == 405
    assert _get(server, "/api/options", host="attacker.example:80")[0] == 403
    assert _get(server, "/api/nothing")[0] == 404
    assert _get(server, "/../../etc/passwd")[0] == 404
    assert _get(server, "/explore.js/../../../etc/passwd")[0] == 404
    status, body = _get(server, "/")
    assert status == 200 and b"diffperf explorer" in body
    fields = "&".join(f"f{i}=1" for i in range(api.MAX_FIELDS + 1))
    status, body = _get(server, "/api/train?" + fields)
    assert status == 400 and b"malformed query" in body


def test_paths_only_with_allow_paths():
    path = str(ROOT / "hardware" / "dgx_h100.toml")
    q = urllib.parse.urlencode({"hardware": path, "model": "llama3_8b", "gpus": 8})
    with pytest.raises(api.ApiError, match="paths are refused"):
        api.handle("leaves", f"hardware={urllib.parse.quote(path)}")
    assert api.handle("leaves", q.split("&")[0], allow_paths=True)["leaves"]


def test_sweep_panel_is_bounded_and_marks_the_front(server):
    q = "job=train&hardware=dgx_h100&model=llama3_8b&gpus=16&global_batch=64"
    status, body = _get(server, "/api/sweep?" + q)
    assert status == 200
    out = json.loads(body)
    pts = out["points"]
    assert 0 < len(pts) <= api.MAX_SWEEP
    assert all(p["tp"] * p["pp"] * p["dp"] == 16 for p in pts)
    front = [p for p in pts if p["pareto"]]
    assert front and all(p["feasible"] for p in front)
    for p in front:  # nothing feasible is both faster and cheaper
        assert not any(
            q["feasible"] and q["step_time_s"] < p["step_time_s"]
            and q["usd_per_million_tokens"] < p["usd_per_million_tokens"]
            for q in pts
        )  # fmt: skip


def test_explore_command_serves_before_any_warmup():
    """With --no-warmup the server answers as soon as it prints its address (how
    fast that is, is a benchmark's business, not a test's)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    p = subprocess.Popen(
        [sys.executable, "-m", "diffperf.cli", "explore", "--port", "0",
         "--no-warmup"],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = p.stdout.readline()
        assert line.startswith("diffperf explorer on http://127.0.0.1:"), line
        port = int(line.split(":")[2].split("/")[0])
        assert _get(port, "/api/options")[0] == 200
    finally:
        p.terminate()
        p.wait(timeout=30)
        p.stdout.close()


def test_cli_set_flag(capsys):
    base = ["train", "--hardware", "dgx_h100", "--model", "llama3_8b", "--gpus", "8",
            "--tp", "8", "--json"]  # fmt: skip
    slow = _cli_json(capsys, [*base, "--set", "chip.hbm_bandwidth=1e12"])
    fast = _cli_json(capsys, [*base, "--set", "hardware.chip.hbm_bandwidth=8e12"])
    assert slow["step_time_s"] > fast["step_time_s"]
    for bad, message in [
        ("chip.warp=1", "not a hardware leaf"),
        ("chip.hbm_bandwidth", "PATH=VALUE"),
        ("chip.hbm_bandwidth=-1", "finite number >= 0"),
        ("chip.hbm_bandwidth=inf", "finite number >= 0"),
    ]:
        assert main([*base, "--set", bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
