import json

import pytest

from minedraft.bench import workloads
from minedraft.bench.workloads import WorkloadError

RECORDS = [{"id": f"r{i}", "conversations": [
    {"from": "human", "value": f"question number {i} about {'cats ' * i}"},
    {"from": "gpt", "value": "an answer"}]} for i in range(6)]


def test_truncated_sharegpt_stops_at_the_damage(tmp_path):
    text = json.dumps(RECORDS, indent=2)
    cut = text.index('"r4"')  # inside the fifth record
    path = tmp_path / "sg.json"
    path.write_text(text[:cut])
    data = workloads.read_sharegpt(path)
    assert [r["id"] for r in data.records] == ["r0", "r1", "r2", "r3"]
    assert data.truncated


def test_complete_file_is_not_truncated(tmp_path):
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(RECORDS))
    data = workloads.read_sharegpt(path)
    assert len(data.records) == 6 and not data.truncated


def test_not_an_array_is_an_error(tmp_path):
    path = tmp_path / "sg.json"
    path.write_text('{"id": 1}')
    with pytest.raises(WorkloadError, match="JSON array"):
        workloads.read_sharegpt(path)


def test_bundled_sharegpt_file_is_truncated_and_mostly_readable():
    data = workloads.read_sharegpt()
    assert data.truncated and 17_000 < len(data.records) < 18_000


def test_sharegpt_sampling_is_deterministic(tokenizer):
    a = workloads.sharegpt_requests(tokenizer, 8, seed=3, max_prompt_len=256)
    b = workloads.sharegpt_requests(tokenizer, 8, seed=3, max_prompt_len=256)
    c = workloads.sharegpt_requests(tokenizer, 8, seed=4, max_prompt_len=256)
    assert [r.prompt_token_ids for r in a] == [r.prompt_token_ids for r in b]
    assert [r.prompt for r in a] != [r.prompt for r in c]
    assert all(4 <= len(r.prompt_token_ids) <= 256 for r in a)
    # the first human turn, inside the chat template
    assert all(tokenizer.decode(r.prompt_token_ids).endswith("<|im_start|>assistant\n") for r in a)
    held_out = workloads.sharegpt_requests(tokenizer, 8, seed=3, max_prompt_len=256, skip=8)
    assert not {r.prompt for r in a} & {r.prompt for r in held_out}


def test_sharegpt_too_strict_filter(tokenizer, tmp_path):
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(RECORDS))
    with pytest.raises(WorkloadError, match="only 0 ShareGPT prompts"):
        workloads.sharegpt_requests(tokenizer, 2, max_prompt_len=5, path=path)


def test_random_workload(tokenizer):
    a = workloads.random_requests(tokenizer, 4, input_len=50, seed=1)
    b = workloads.random_requests(tokenizer, 4, input_len=50, seed=1)
    assert [r.prompt_token_ids for r in a] == [r.prompt_token_ids for r in b]
    assert all(len(r.prompt_token_ids) == 50 for r in a)
    assert not set().union(*(r.prompt_token_ids for r in a)) & set(tokenizer.all_special_ids)


def test_jsonl_prompts(tokenizer, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Hello"}\n\n'
                    '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}\n')
    reqs = workloads.jsonl_requests(tokenizer, path)
    assert reqs[0].prompt_token_ids == tokenizer("Hello")["input_ids"]
    assert reqs[1].output_len == 5 and reqs[1].prompt == "Hi"


@pytest.mark.parametrize("line, message", [
    ("{not json", "p.jsonl:2: not valid JSON"),
    ('["a"]', "p.jsonl:2: each line must be a JSON object"),
    ('{"text": "x"}', 'p.jsonl:2: needs a non-empty "prompt"'),
    ('{"prompt": "x", "max_tokens": 0}', "p.jsonl:2: max_tokens must be a positive integer"),
])
def test_bad_jsonl_names_the_line(tokenizer, tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n' + line + "\n")
    with pytest.raises(WorkloadError, match=message):
        workloads.jsonl_requests(tokenizer, path)
