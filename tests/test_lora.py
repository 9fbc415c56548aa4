"""LoRA through `peft_config`: only adapters train, the saved adapter reloads with peft, and with beta > 0 the
reference is the base model with the adapters disabled (no second copy of the weights)."""

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM

from opo_trl import OPOConfig, OPOTrainer

from .conftest import cpu_config_kwargs, distinct_chars_reward, hand_logps


@pytest.mark.slow
def test_lora_adapter_saves_reloads_and_serves_as_reference_base(tmp_path, tiny_model_path, prompt_dataset):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = OPOConfig(**cpu_config_kwargs(tmp_path / "run", beta=0.2, max_steps=3))
    trainer = OPOTrainer(
        model=tiny_model_path,
        reward_funcs=distinct_chars_reward,
        args=args,
        train_dataset=prompt_dataset,
        peft_config=lora,
    )
    assert trainer.ref_model is None  # the reference comes from disabling the adapters
    trainer.train()
    assert "kl" in {k for e in trainer.state.log_history for k in e}

    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    reloaded = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    trained = trainer.model.eval()
    ids = torch.randint(6, base.config.vocab_size, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits)
        # The adapters moved the model away from its base.
        with trained.disable_adapter():
            base_logits = trained(input_ids=ids).logits
        assert not torch.allclose(base_logits, trained(input_ids=ids).logits)

    # With beta > 0, TRL's reference log-probs are the base model's (adapters disabled), computed by hand here.
    trainer.model.train()
    output = trainer._generate_and_score_completions([{"prompt": "1+2="}] * 4)
    fresh_base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    with torch.no_grad():
        expected = hand_logps(fresh_base, output["prompt_ids"], output["completion_ids"])
    mask = output["completion_mask"].bool()
    torch.testing.assert_close(output["ref_per_token_logps"][mask], expected[mask], rtol=1e-4, atol=1e-5)
