#!/usr/bin/env python3
"""Start-up time of a function bootstrap to its first Lambda runtime-API poll.

    python3 bench/startup.py target/lambda-x86-64/planet-sync/bootstrap [runs]

Serves a fake runtime API on a local port, starts the bootstrap with AWS_LAMBDA_RUNTIME_API pointing at it, and
measures the time from spawn to the first `GET /2018-06-01/runtime/invocation/next`. Prints the median of runs.
"""
import os, socket, statistics, subprocess, sys, time

def once(binary):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{port}", AWS_LAMBDA_FUNCTION_NAME="bench",
               AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128", AWS_LAMBDA_FUNCTION_VERSION="1",
               AWS_LAMBDA_LOG_STREAM_NAME="s", AWS_LAMBDA_LOG_GROUP_NAME="g",
               DATABASE_URL="postgres://postgres@127.0.0.1:5432/test")
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conn, _ = server.accept()
    data = b""
    while b"\r\n" not in data:
        data += conn.recv(4096)
    elapsed = time.perf_counter() - start
    assert b"/runtime/invocation/next" in data, data
    proc.kill()
    proc.wait()
    conn.close()
    server.close()
    return elapsed

binary = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
times = [once(binary) for _ in range(runs)]
print(f"start-up to first poll: median {statistics.median(times) * 1000:.1f} ms, "
      f"min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms over {runs} runs")
