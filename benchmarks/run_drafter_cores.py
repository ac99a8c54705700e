"""The lean drafter's round time by requests, k and number of cores, measured on this machine
(alone, through its channel): the input of the CPU-drafter GPU scenario (issue 14).

    .venv/bin/python benchmarks/run_drafter_cores.py --out benchmarks/drafter_cores.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/drafter_cores.json", help="output JSON")
    p.add_argument("--cores", default="1,0-1", help="core lists to compare (default: 1,0-1)")
    p.add_argument("--batches", default="1,4,16,32", help="requests per round")
    p.add_argument("--ks", default="1,2,3", help="draft lengths")
    args = p.parse_args()

    from minedraft import models
    from minedraft.bench.provenance import provenance
    from minedraft.core import messages as m
    from minedraft.drafter.client import (DrafterClient, drafter_command, free_tcp_address,
                                          spawn_drafter)
    from minedraft.runtime.api import load_workload

    tokenizer = models.load_tokenizer(models.resolve(models.TARGET))
    prompts = [r.prompt_token_ids for r in load_workload("sharegpt", tokenizer, 32,
                                                         max_prompt_len=1024)]
    draft = str(models.resolve(models.DRAFTER))
    rows = []
    for cores in args.cores.split(","):
        for quantization in (None, "int8"):
            address = free_tcp_address()
            cmd = drafter_command(draft, address, cores=cores, quantization=quantization)
            client = DrafterClient(address, spawn_drafter(cmd), timeout_s=300)
            try:
                client.send(m.Hello())
                client.receive(timeout_s=600)
                for b in map(int, args.batches.split(",")):
                    seqs = {f"{b}-{i}": list(prompts[i % len(prompts)]) for i in range(b)}
                    client.send(m.Draft(k=1, reqs={r: m.Tokens(0, s) for r, s in seqs.items()},
                                        ingest=list(seqs)))
                    client.receive()
                    for k in map(int, args.ks.split(",")):
                        times, fwd = [], []
                        for rep in range(5):
                            reqs = {}
                            for rid, s in seqs.items():
                                start = len(s)
                                s.extend([s[-1]] * 2)
                                reqs[rid] = m.Tokens(start, s[start:])
                            client.send(m.Draft(k=k, reqs=reqs))
                            reply = client.receive()
                            if rep:
                                times.append(reply.draft_ms)
                                fwd.append(reply.forward_ms / reply.forwards)
                        rows.append({"cores": cores, "quantization": quantization or "bf16",
                                     "batch": b, "k": k, "round_ms": statistics.median(times),
                                     "forward_ms": statistics.median(fwd)})
                        print(rows[-1], flush=True)
                    client.send(m.Draft(k=1, reqs={}, free=list(seqs)))
                    client.receive()
            finally:
                client.close()
    Path(args.out).write_text(json.dumps({"rounds": rows, **provenance()}, indent=1))


if __name__ == "__main__":
    main()
