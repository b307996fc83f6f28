"""Errors as a grpcio client sees them: however bad a RecordSignals batch,
the answer is INVALID_ARGUMENT with small trailers (grpcio refuses trailers
over 16 KiB and reports RESOURCE_EXHAUSTED instead, which callers retry).

Run by scripts/client-check.sh against a service it starts.
"""

import sys
import time

import grpc

import leadscore.v1.leadscore_pb2 as pb
import leadscore.v1.leadscore_pb2_grpc as rpc

address = sys.argv[1]
channel = grpc.insecure_channel(address)
grpc.channel_ready_future(channel).result(timeout=10)
stub = rpc.LeadScoringStub(channel)
now = int(time.time())
failures = 0


def batch(n, type_len):
    signals = []
    for i in range(n):
        s = pb.Signal(event_id=f"e{i}", lead_id="lead-1", type=f"page_veiw_{i}_" + "y" * type_len)
        s.occurred_at.seconds = now
        s.properties["\u202e" + "k" * 200] = "v"
        signals.append(s)
    return pb.RecordSignalsRequest(signals=signals)


for n, type_len in [(1, 10), (50, 10), (50, 300), (1000, 300)]:
    try:
        stub.RecordSignals(batch(n, type_len), timeout=10)
        print(f"FAIL {n} misspelled signals were accepted")
        failures += 1
        continue
    except grpc.RpcError as e:
        code, trailers = e.code(), e.trailing_metadata() or ()
    size = sum(len(k) + len(v) for k, v in trailers)
    if code != grpc.StatusCode.INVALID_ARGUMENT or size >= 8 * 1024:
        print(f"FAIL {n} signals (types of {type_len} bytes): {code}, {size} bytes of trailers")
        failures += 1
    else:
        print(f"ok   {n} signals (types of {type_len} bytes): {code.name}, {size} bytes of trailers")

print(f"grpcio: {4 - failures} passed, {failures} failed")
sys.exit(1 if failures else 0)
