"""The native-LLM extension's six training stages, on the Llama-3.1-8B-Instruct recipe
(configs/finetune_llama3_8b.py: same model, tokenizer, batch and mesh).

Each stage is a dict (keys in promethios_jax/stages.py); the run moves through them in
order, saves a checkpoint and marks TensorBoard and metrics.jsonl at each boundary, and
resumes mid-stage exactly. About 3 epochs in all, as the 8B recipe.

1. foundation (1 epoch, everything trains, 5e-5): the base reads the governance
   scenarios as they are generated, the LM loss leading (heads at a tenth of their
   weight): the new control tokens and <assess> get embeddings the later stages build on.
2. governance injection (0.5 epoch, telemetry encoder and heads only, 1e-4): the
   backbone is frozen, so the anchors learn to inject telemetry and the heads to read
   the <assess> state without moving the language the base already has; no optimizer
   state is kept for the frozen 8B (the step is cheap). Constitutional and operational
   scenarios, the rule-heavy ones, weigh double.
3. trust calibration (0.5 epoch, everything, 2e-5): trust-management scenarios weigh
   triple; the HITL, confidence and uncertainty losses weigh double, the LM half. This
   is where the heads' probabilities are calibrated against the domain thresholds.
4. multi-agent coordination (0.5 epoch, everything, 2e-5): collaboration, memory
   integration and SaaS development scenarios (the agent-coordinator, memory and sandbox
   tools) weigh double, the tool head weighs double.
5. fine-tuning (0.5 epoch, everything, 1e-5 linear to 0): the data as generated and the
   default loss weights, a low rate: consolidates the stages without a mix bias.
6. evaluation (no training): the eval job scores the final checkpoint on the held-out
   split: `python -m eval.job --workdir=W` (the run writes TRAINING_DONE, which
   `eval.job --watch` waits for).
"""
from pathlib import Path

from promethios_jax.config import load_config_file


def get_config():
    c = load_config_file(str(Path(__file__).with_name("finetune_llama3_8b.py")))
    c.stages = (
        {"name": "foundation", "epochs": 1.0, "trains": "all", "learning_rate": 5e-5,
         "loss": {"lm": 1.0, "hitl": 0.1, "decision": 0.05, "confidence": 0.05, "uncertainty": 0.05,
                  "bias": 0.05, "tool": 0.05}},
        {"name": "governance injection", "epochs": 0.5, "trains": "governance", "learning_rate": 1e-4,
         "warmup_steps": 10, "data_mix": {"constitutional": 2.0, "operational": 2.0, "trust_management": 1.0,
                                          "saas_development": 1.0, "collaboration": 1.0,
                                          "professional_communication": 1.0, "memory_integration": 1.0}},
        {"name": "trust calibration", "epochs": 0.5, "trains": "all", "learning_rate": 2e-5,
         "loss": {"lm": 0.5, "hitl": 2.0, "confidence": 1.0, "uncertainty": 1.0},
         "data_mix": {"constitutional": 1.0, "operational": 1.0, "trust_management": 3.0, "saas_development": 1.0,
                      "collaboration": 1.0, "professional_communication": 1.0, "memory_integration": 1.0}},
        {"name": "multi-agent coordination", "epochs": 0.5, "trains": "all", "learning_rate": 2e-5,
         "loss": {"tool": 1.0},
         "data_mix": {"constitutional": 1.0, "operational": 1.0, "trust_management": 1.0, "saas_development": 2.0,
                      "collaboration": 2.0, "professional_communication": 1.0, "memory_integration": 2.0}},
        {"name": "fine-tuning", "epochs": 0.5, "trains": "all", "learning_rate": 1e-5, "schedule": "linear",
         "min_lr_ratio": 0.0},
        {"name": "evaluation", "evaluate": True},
    )
    return c
