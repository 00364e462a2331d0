"""The DDPM experiment's report.md (its figures are :mod:`.plots`')."""

from __future__ import annotations

from typing import Any


def render_report(result: dict[str, Any]) -> str:
  config, env, train_info = result["config"], result["environment"], result["train"]
  compiled_note = " (includes compilation)" if train_info["throughput_includes_compilation"] else ""
  lines = [
    "# A first DDPM on MNIST",
    "",
    "## Setup",
    "",
    f"- Data: {result['data_label']} (`{result['data']}`)",
    f"- Model: U-Net `{config['model_size']}`{_unet_overrides(config)} in "
    f"{config.get('compute_dtype', 'float32')}, predicting {_target(config)}; "
    f"schedule {config['schedule']}, "
    f"T = {config['num_timesteps']}{_conditioning(config)}; sampler {sampler_words(config)}",
    f"- Training: {train_info['steps']} steps"
    + (f" (a budget of {config['train_minutes']:g} min)" if config.get("train_minutes") else "")
    + f", batch {config['batch_size']}, Adam lr "
    f"{config['learning_rate']:g} (warm-up {config['warmup_steps']}), clip {config['grad_clip']}, "
    f"EMA {config['ema_decay']}, Langevin D {config['langevin_diffusion']:g}",
    *_machine_lines(env),
    "",
    "## Results",
    "",
    f"- Final training loss (mean of the last 100 steps): {train_info['final_loss']:.4f}",
    f"- Throughput: {train_info['images_per_second']:.0f} training images/s{compiled_note} "
    f"({train_info['training_seconds'] / 60:.1f} min of training)",
  ]
  bpd = result["test_bits_per_dim"]
  timesteps = config["bpd_timesteps"]
  lines.append(
    f"- Test bound (negative ELBO) on {config['eval_images']} held-out images: "
    f"**{bpd['total']:.3f} bits/dim** (prior {bpd['prior']:.4f}, decoder {bpd['decoder']:.3f}, "
    f"KL terms {bpd['kl_sum']:.3f}; "
    + (
      "all T timesteps" if timesteps is None else f"estimated from {timesteps} sampled t per image"
    )
    + ")"
  )
  sampling = result["sampling"]
  lines.append(f"- Sampling {sampling['num_samples']} images took {sampling['seconds']:.1f} s")
  quality = result["sample_quality"]
  if quality:
    lines += ["", *quality_lines(quality, config, sampling["num_samples"])]
  lines += _sample_figure_lines(config)
  lines += ["", "![loss](loss.png)", "", "![denoise](denoise.png)"]
  lines += ["", *_reproduce_lines(result, "report.json", resume=True)]
  return "\n".join(lines) + "\n"


def _reproduce_lines(result: dict[str, Any], report_json: str, resume: bool) -> list[str]:
  """How the report was made, how to resume the run or sample it again, and its summaries."""
  commands = result.get("commands")
  if commands is None:  # a report from before the commands were recorded
    return []
  lines = ["## How it was made", "", "```bash", commands["made_by"], "```", ""]
  if resume:
    lines += [
      "Resume it (after an interruption, or with a larger `--steps` to train on):",
      "",
      "```bash",
      commands["resume"],
      "```",
      "",
    ]
  lines += [
    "Sample and score its last checkpoint again with other sampling flags, beside this report "
    "(e.g. DPM-Solver++ in 20 steps):",
    "",
    "```bash",
    commands["sample_again"],
    "```",
    "",
  ]
  summaries = result.get("summaries")
  if summaries:
    lines.append(
      f"Its metrics and sample grids are TensorBoard summaries in [{summaries}/]({summaries}/) "
      f"(`{commands['tensorboard']}`; the same scalars in `{summaries}/*/scalars.jsonl`)."
    )
  else:
    lines.append("No summaries were written (`--no-summaries`).")
  lines += ["", f"The report's numbers: [{report_json}]({report_json})."]
  return lines


def render_sample_report(result: dict[str, Any], tag: str) -> str:
  """report-<tag>.md of a trained run sampled again (``--sample-only``)."""
  config, env, sampling = result["config"], result["environment"], result["sampling"]
  lines = [
    f"# The DDPM run sampled again: {tag}",
    "",
    f"The EMA parameters of the run's last checkpoint (step {result['checkpoint_step']}; its "
    "training report is [report.md](report.md)), sampled with "
    f"{sampler_words(config)}.",
    "",
    f"- Data: {result['data_label']} (`{result['data']}`)",
    *_machine_lines(env),
    f"- Sampling {sampling['num_samples']} images took {sampling['seconds']:.1f} s",
  ]
  quality = result["sample_quality"]
  if quality:
    lines += ["", *quality_lines(quality, config, sampling["num_samples"], tag)]
  lines += _sample_figure_lines(config, tag)
  lines += ["", *_reproduce_lines(result, output_name("report", "json", tag), resume=False)]
  return "\n".join(lines) + "\n"


def _machine_lines(env: dict[str, Any]) -> list[str]:
  return [
    f"- Machine: {env['device_kind']} ×{env['device_count']} ({env['platform']}), CPU "
    f"{env['cpu_model']} ({env['cpu_cores']} cores); "
    + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
    f"- Date {env['date']}; wall time {env['wall_time_s'] / 60:.1f} min",
  ]


def _sample_figure_lines(config: dict[str, Any], tag: str = "") -> list[str]:
  lines = ["", f"![samples]({output_name('samples', 'png', tag)})"]
  if config.get("conditional"):
    by_class = output_name("samples_by_class", "png", tag)
    lines += ["", f"![one row per digit asked for]({by_class})"]
  return lines


def quality_lines(
  quality: dict[str, Any], config: dict[str, Any], num_samples: int, tag: str = ""
) -> list[str]:
  """report.md's sample-quality sections: the scores, per digit for a conditional run, the
  sampler table and the guidance sweep, linking their figures (named with ``tag``)."""
  samples, floor = quality["samples"], quality["real_test_floor"]
  conditional = "class_accuracy" in samples
  intro = (
    "Scores from a small MNIST classifier trained here on the real training set. The "
    "classifier FD is a Fréchet distance between its penultimate-layer features: it is "
    "**not comparable to published FIDs**."
  )
  if conditional:
    intro += (
      " A conditional run's samples are also checked against the digit each was drawn for: "
      "the share the classifier assigns to it, and the share it assigns there with p ≥ 0.9."
    )
  lines = ["## Sample quality", "", intro, ""]
  if conditional:
    lines += [
      "| | classifier FD | confident (p ≥ 0.9) | digit asked for | confident and asked for "
      "| class histogram |",
      "|---|---|---|---|---|---|",
    ]
    for name, scores in ((f"samples ({config['sampler']})", samples),
                         ("real test images (floor)", floor)):  # fmt: skip
      lines.append(
        f"| {name} | {scores['classifier_fd']:.2f} | {scores['confident_share']:.1%} | "
        f"{scores['class_accuracy']:.1%} | {scores['confident_accurate_share']:.1%} | "
        f"{scores['class_histogram']} |"
      )
    lines += ["", *_per_digit_lines(samples, floor)]
  else:
    lines += [
      "| | classifier FD | confident (p ≥ 0.9) | class histogram |",
      "|---|---|---|---|",
      f"| samples ({config['sampler']}) | {samples['classifier_fd']:.2f} | "
      f"{samples['confident_share']:.1%} | {samples['class_histogram']} |",
      f"| real test images (floor) | {floor['classifier_fd']:.2f} | "
      f"{floor['confident_share']:.1%} | {floor['class_histogram']} |",
    ]
  if "sampler_table" in quality:
    lines += ["", *_sampler_table_lines(quality["sampler_table"], num_samples)]
    previews = output_name("samplers", "png", tag)
    lines += ["", f"![the first samples of each sampler]({previews})"]
  if "guidance_sweep" in quality:
    lines += ["", *_guidance_lines(quality["guidance_sweep"], config, num_samples)]
    tradeoff = output_name("guidance", "png", tag)
    lines += ["", f"![FD against the asked-for digit's share]({tradeoff})"]
  return lines


def output_name(stem: str, suffix: str, tag: str = "") -> str:
  """``stem.suffix``, or ``stem-tag.suffix`` for the outputs of a run sampled again (a tag
  naming the sampler), which so never replace the training report's."""
  return f"{stem}-{tag}.{suffix}" if tag else f"{stem}.{suffix}"


def _fd(value: float | None) -> str:
  return "–" if value is None else f"{value:.1f}"


def _per_digit_lines(samples: dict[str, Any], floor: dict[str, Any]) -> list[str]:
  real = {row["digit"]: row for row in floor["per_class"]}
  lines = [
    "Per digit asked for (a digit's FD from its few samples is biased upwards more than the "
    "whole set's: compare it with the real digits' at the same count):",
    "",
    "| digit | samples | asked-for share | classifier FD | real digits' FD |",
    "|---|---|---|---|---|",
  ]
  for row in samples["per_class"]:
    other = real.get(row["digit"], {})
    lines.append(
      f"| {row['digit']} | {row['num_samples']} | {row['class_accuracy']:.1%} | "
      f"{_fd(row['classifier_fd'])} | {_fd(other.get('classifier_fd'))} |"
    )
  return lines


def _guidance_lines(rows: list[dict[str, Any]], config: dict[str, Any], num_samples: int
                    ) -> list[str]:  # fmt: skip
  digits = [row["digit"] for row in rows[0]["per_class"]]
  lines = [
    "## Guidance",
    "",
    f"Classifier-free guidance at each weight w, {sampler_words({**config, 'conditional': False})},"
    f" from the same EMA parameters and initial noise, {num_samples} samples each; the time is "
    "sampling only, compiled beforehand.",
    "",
    "| w | classifier FD | digit asked for | confident (p ≥ 0.9) | confident and asked for | s |",
    "|---|---|---|---|---|---|",
  ]
  for row in rows:
    lines.append(
      f"| {row['guidance']:g} | {row['classifier_fd']:.2f} | {row['class_accuracy']:.1%} | "
      f"{row['confident_share']:.1%} | {row['confident_accurate_share']:.1%} | "
      f"{row['seconds']:.1f} |"
    )
  lines += [
    "",
    "Classifier FD per digit asked for:",
    "",
    "| w | " + " | ".join(map(str, digits)) + " |",
    "|---|" + "---|" * len(digits),
  ]
  for row in rows:
    cells = " | ".join(_fd(digit["classifier_fd"]) for digit in row["per_class"])
    lines.append(f"| {row['guidance']:g} | {cells} |")
  return lines


def sampler_words(config: dict[str, Any]) -> str:
  """The configured sampler in words, with its guidance for a conditional run."""
  words = config["sampler"] + {
    "ddim": f" ({config['sample_steps']} steps)",
    "dpm_solver": f" (DPM-Solver++(2M), {config['sample_steps']} steps)",
    "pc": f" ({_pc_predictor(config)} predictor, {config['corrector_steps']} Langevin "
    f"corrector steps per level, snr {config['snr']:g})",
  }.get(config["sampler"], "")
  if config.get("conditional"):
    digits = ", ".join(map(str, config["class_labels"])) or "every digit"
    words += f", guidance w = {config['guidance']:g} towards {digits}"
  return words


def _conditioning(config: dict[str, Any]) -> str:
  if not config.get("conditional"):
    return ""
  return f"; class-conditional (labels dropped with probability {config['label_dropout']:g})"


def _pc_predictor(config: dict[str, Any]) -> str:
  if config.get("pc_predictor", "ddpm") == "ddim":
    return f"DDIM {config['sample_steps']}-step"
  return "ancestral"


def _unet_overrides(config: dict[str, Any]) -> str:
  parts = []
  if config.get("base_channels"):
    parts.append(f"{config['base_channels']} base channels")
  if config.get("num_res_blocks"):
    parts.append(f"{config['num_res_blocks']} residual blocks per level")
  return f" ({', '.join(parts)})" if parts else ""


def _target(config: dict[str, Any]) -> str:
  prediction = config.get("prediction", "eps")
  if config.get("loss_weighting", "uniform") == "min_snr":
    return f"{prediction} with min-SNR-{config['min_snr_gamma']:g} loss weights"
  return f"{prediction} (uniform loss weights)"


def sampler_name(row: dict[str, Any]) -> str:
  """A sampler table row's sampler in words."""
  if row["sampler"] == "dpm_solver":
    return f"DPM-Solver++(2M), {row['solver_steps']} steps"
  if row["sampler"] == "ddim":
    return f"DDIM, {row['ddim_steps']} steps"
  if row["corrector_steps"]:
    predictor = "DDPM" if row["ddim_steps"] is None else f"DDIM {row['ddim_steps']}"
    return f"PC: {predictor} + {row['corrector_steps']} corrector step(s), snr {row['snr']:g}"
  return "DDPM (ancestral)"


def _sampler_table_lines(rows: list[dict[str, Any]], num_samples: int) -> list[str]:
  header = (
    "| sampler | model evaluations | classifier FD | confident | rarest class "
    "| class share range | s |"
  )
  lines = [
    "## Samplers",
    "",
    f"The same EMA parameters and initial noise, {num_samples} samples per row; the class share "
    "range is the most frequent class's share of the samples minus the rarest class's; the "
    "time is sampling only, compiled beforehand.",
    "",
    header,
    "|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    lines.append(
      f"| {sampler_name(row)} | {row['model_evaluations']} | {row['classifier_fd']:.2f} | "
      f"{row['confident_share']:.1%} | {row['rarest_class_share']:.1%} | "
      f"{row['class_share_range']:.1%} | {row['seconds']:.1f} |"
    )
  return lines
