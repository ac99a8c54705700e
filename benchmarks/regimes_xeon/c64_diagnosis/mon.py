import os, sys, time, json
root = int(sys.argv[1]); out = open(sys.argv[2], "w")
def tree(pid):
    kids = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                kids += [int(c) for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
            except OSError: pass
    except OSError: return []
    res=[pid]
    for k in kids: res += tree(k)
    return res
while os.path.exists(f"/proc/{root}"):
    now = time.time(); rows = {}
    for pid in tree(root):
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            cpu = wait = 0; nvcs = 0
            for t in os.listdir(f"/proc/{pid}/task"):
                try:
                    a = open(f"/proc/{pid}/task/{t}/schedstat").read().split()
                    cpu += int(a[0]); wait += int(a[1])
                    for line in open(f"/proc/{pid}/task/{t}/status"):
                        if line.startswith("nonvoluntary_ctxt_switches"): nvcs += int(line.split()[1])
                except OSError: pass
            rows[pid] = (comm, cpu, wait, nvcs)
        except OSError: pass
    out.write(json.dumps([now, rows]) + "\n"); out.flush()
    time.sleep(0.5)
