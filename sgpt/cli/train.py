"""sgpt-train: the three SpeechGPT training stages on packed shards."""

from __future__ import annotations

from pathlib import Path

import click

from sgpt import __version__
from sgpt.cli.common import DEVICE_HELP, Reporter, progress_bar, run_tool
from sgpt.core.errors import SgptError

TOOL = "sgpt-train"
STAGES = ("pretrain", "cross-modal", "chain-of-modality")


def _comma_list(ctx, param, value):
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.version_option(__version__, prog_name=TOOL)
@click.option("--stage", type=click.Choice(STAGES), default=None,
              help="pretrain (stage 1: unit sequences), cross-modal (stage 2: ASR/TTS "
                   "instructions), chain-of-modality (stage 3).")
@click.option("--model", default=None, metavar="BASE",
              help="Base model: a transformers causal-LM directory, the previous stage's "
                   "output directory, or a .gguf file.")
@click.option("--data", multiple=True, metavar="PACKED",
              help="Packed shards (sgpt-tokenize pack); repeat for several directories.")
@click.option("-o", "--output", default=None, metavar="DIR",
              help="Output model directory; a re-run of the same command resumes it.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              metavar="FILE.yaml", help="Settings (examples/configs/*.yaml); flags override.")
@click.option("--tokenizer", default=None, metavar="DIR",
              help="Extended tokenizer (default: the one the data's header names; it must "
                   "be the one the data was packed with).")
@click.option("--eval-data", multiple=True, metavar="PACKED",
              help="Held-out packed shards (default: --eval-fraction of --data).")
@click.option("--eval-fraction", type=float, default=None,
              help="Share of --data held out for the eval loss [0.01].")
@click.option("--eval-every", type=int, default=None, help="Steps between evaluations [200].")
@click.option("--method", type=click.Choice(["full", "lora"]), default=None,
              help="Full fine-tuning, or LoRA adapters [lora in stage 3, else full].")
@click.option("--lora-r", type=int, default=None, help="LoRA rank [8].")
@click.option("--lora-alpha", type=int, default=None, help="LoRA alpha [16].")
@click.option("--lora-dropout", type=float, default=None, help="LoRA dropout [0.05].")
@click.option("--lora-target", default=None, callback=_comma_list, metavar="MODULES",
              help="Comma-separated module names LoRA wraps [q_proj,v_proj].")
@click.option("--train-new-tokens/--freeze-new-tokens", default=None,
              help="LoRA: also train the embedding rows of tokens new to the base (peft's "
                   "trainable_token_indices; a tied output head follows) [train].")
@click.option("--epochs", type=float, default=None, help="Passes over the data [1].")
@click.option("--max-steps", type=int, default=None,
              help="Optimizer steps (overrides --epochs).")
@click.option("--batch-size", type=int, default=None,
              help="Sequences per micro-batch and process [4].")
@click.option("--grad-accum", type=int, default=None,
              help="Micro-batches per optimizer step [1]; global batch = batch size x grad "
                   "accum x processes.")
@click.option("--lr", type=float, default=None, help="Peak learning rate [2e-5].")
@click.option("--min-lr-ratio", type=float, default=None,
              help="Cosine floor as a fraction of --lr [0].")
@click.option("--warmup-ratio", type=float, default=None,
              help="Share of the steps with linear warmup [0.03].")
@click.option("--weight-decay", type=float, default=None, help="AdamW weight decay [0].")
@click.option("--max-grad-norm", type=float, default=None,
              help="Gradient clipping; 0: none [1.0].")
@click.option("--max-length", type=int, default=None,
              help="Cut longer sequences to this many tokens [as packed].")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None,
              help="Recompute activations in the backward pass (less memory) [off].")
@click.option("--shared-prefix/--no-shared-prefix", default=None,
              help="Pack micro-batches: the leading tokens all sequences share (the system "
                   "prompt) computed once, no padding; same loss to rounding [on].")
@click.option("--loss-norm", type=click.Choice(["token", "data"]), default=None,
              help="token: the loss is the mean over the batch's trained tokens; data: each "
                   "--data directory's tokens are averaged apart and weighted by its share "
                   "of the batch's sequences, so ASR records (a few text tokens) weigh as "
                   "much as TTS ones (many units) and repeating a --data sets the mix "
                   "[token].")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16"]), default=None,
              help="bfloat16: autocast, trainable weights and optimizer in float32, frozen "
                   "base weights held in bfloat16; auto: bfloat16 on CUDA and CPUs "
                   "(AVX512-BF16, AMX) that have it, else float32 [auto].")
@click.option("--device", default=None, help=DEVICE_HELP + " [auto].")
@click.option("--seed", type=int, default=None,
              help="Data order, held-out split, dropout [0].")
@click.option("--save-every", type=int, default=None, help="Steps between checkpoints [100].")
@click.option("--log-every", type=int, default=None,
              help="Steps between metrics lines (DIR/metrics.jsonl) [10].")
@click.option("--strategy", type=click.Choice(["ddp", "fsdp"]), default=None,
              help="Under torchrun: ddp (a model replica per process) or fsdp (weights, "
                   "gradients and optimizer state sharded by decoder layer) [ddp].")
@click.option("--merge/--no-merge", default=None,
              help="LoRA: write the merged full model instead of the adapter [no].")
@click.option("--keep-checkpoint", is_flag=True, default=None,
              help="Keep DIR/checkpoint (weights + optimizer) after the run.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("--snapshot", default=None, metavar="DEST",
              help="Write the model at -o DIR's latest checkpoint into DEST, as a finished "
                   "run would, and exit; DIR stays resumable. The settings are DIR's "
                   "train_config.yaml (only --device may be given).")
@click.pass_context
@run_tool(TOOL)
def cli(ctx, config_file, snapshot, **flags):
    """Train a SpeechGPT stage on packed shards; write an sgpt model directory.

    The base model's embeddings grow to the extended tokenizer (new rows: the mean of the
    old, tied heads stay tied). DIR gets the model (or LoRA adapter), the tokenizer,
    sgpt_model.json, train_config.yaml (the effective settings) and metrics.jsonl (loss, lr,
    tokens/s, eval loss, training seconds; a line for each start names the machine).
    Checkpoints (DIR/checkpoint: safetensors + JSON) let a killed run resume with the same
    command; SIGINT or SIGTERM (timeout, Slurm) finishes the current step, saves a
    checkpoint and exits (130 or 143). Under torchrun, each process takes its
    share of every batch (DDP; gloo on CPU, NCCL on CUDA). Defaults in [brackets].

    \b
    Example:
      sgpt-train --stage pretrain --config examples/configs/pretrain.yaml \\
          --model llama-7b-hf --data packed-s1 -o s1
      sgpt-train --stage cross-modal --model s1 --data packed-s2 -o s2 --lr 2e-5
      sgpt-train --stage chain-of-modality --model s2 --data packed-s3 -o s3 --method lora
      torchrun --nproc-per-node 8 $(which sgpt-train) --config examples/configs/cross-modal.yaml \\
          --model s1 --data packed-s2 -o s2
      timeout 2h sgpt-train ... -o s2; sgpt-train -o s2 --snapshot s2-now  # judge it so far
    """
    from sgpt.core.files import read_yaml_mapping
    from sgpt.core.training import Interrupted, interrupted_note
    from sgpt.train.recipe import Run, SettingsError, make_config

    reporter = Reporter(TOOL)
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    for key in ("data", "eval_data"):
        if key in given:
            given[key] = list(given[key])
    if "keep_checkpoint" in given and not given["keep_checkpoint"]:
        del given["keep_checkpoint"]
    if snapshot is not None:
        return _snapshot(reporter, given, config_file, snapshot)
    try:
        file_values = read_yaml_mapping(config_file) if config_file else {}
    except SgptError as e:  # a missing or unreadable --config is a usage error (exit 2)
        raise click.BadParameter(str(e), param_hint="'--config'") from None
    try:
        config = make_config(file_values, given)
        config.check()
    except TypeError as e:
        raise click.UsageError(f"{config_file}: {e}") from None
    except SettingsError as e:  # a missing or invalid setting: exit 2, like click's own
        message = str(e)
        if config_file and message.startswith(("unknown setting", "setting ")):
            message = f"{config_file}: {message}"
        raise click.UsageError(message) from None
    run = Run(config, log=reporter.info, warn=reporter.warn)
    main_process = getattr(run, "dist", None) is None or run.dist.main
    enabled = config.progress if main_process else False
    total = getattr(run, "total_steps", None)
    with progress_bar(enabled, total, f"{config.stage}") as advance:
        try:
            last = run.train(advance)
        except Interrupted as e:
            if main_process:
                reporter.info(interrupted_note(e, config.output))
            return 128 + e.signum
    if last and not last.get("finished") and main_process:
        parts = [f"step {last['step']}", f"loss {last['loss']:.4f}"]
        if "eval_loss" in last:
            parts.append(f"eval loss {last['eval_loss']:.4f}")
        parts.append(f"{last['tokens_per_s']:.0f} tokens/s")
        reporter.info(", ".join(parts))
    return 0


def _snapshot(reporter, given: dict, config_file, dest: str) -> int:
    """--snapshot DEST: the model at OUT's checkpoint, with OUT's own settings."""
    from sgpt.core.files import read_yaml_mapping
    from sgpt.train.recipe import CONFIG_FILE, Run, make_config

    out = given.pop("output", None)
    if out is None:
        raise click.UsageError("--snapshot needs -o DIR: the run to take the model from")
    extra = sorted(set(given) - {"device", "progress"}) + (["config"] if config_file else [])
    if extra:
        raise click.UsageError(f"--snapshot takes the settings of {out}/{CONFIG_FILE}: drop "
                               + ", ".join("--" + k.replace("_", "-") for k in extra))
    saved = Path(out) / CONFIG_FILE
    if not saved.is_file():
        raise SgptError(f"{out}: holds no sgpt-train run ({CONFIG_FILE} missing)")
    config = make_config(read_yaml_mapping(saved), {**given, "output": out})
    step = Run(config, log=reporter.info, warn=reporter.warn, for_snapshot=True).snapshot(dest)
    reporter.info(f"{dest}: the model at step {step} of {out}")
    return 0


def main():
    cli(prog_name=TOOL)


if __name__ == "__main__":
    main()
