import os, time, torch, sys
os.sched_setaffinity(0, {1}); torch.set_num_threads(1)
a=torch.randn(256,576,dtype=torch.bfloat16); w=torch.randn(576,1536,dtype=torch.bfloat16)
duty=float(sys.argv[1]) if len(sys.argv)>1 else 1.0
while True:
    t=time.perf_counter()
    while time.perf_counter()-t<0.1*duty: (a@w).sum()
    if duty<1: time.sleep(0.1*(1-duty))
