"""`autosearch arch` and `autosearch train`: one architecture, counted or trained."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from autosearch.models import (
    DEFAULT_MAX_PARAMS,
    ArchSpec,
    BudgetError,
    SpecError,
    check_budget,
    count_convs,
    count_flops,
    count_params,
    get_preset,
    make_spec,
)
from autosearch.search.cli.app import (
    EXIT_OVER_BUDGET,
    DataDirOpt,
    DataOpt,
    DeviceOpt,
    ImageSizeOpt,
    JsonOpt,
    MaxParamsOpt,
    app,
    console,
    fail,
)
from autosearch.search.training.recipe import RecipeError, get_recipe


def parse_ints(option: str, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{option} takes comma-separated integers, got {text!r}")
    if not values:
        fail(f"{option} takes comma-separated integers, got {text!r}")
    return values


def spec_from_options(
    preset: str | None,
    widths: str | None,
    repeats: str | None,
    strides: str | None,
    kernels: str | None,
    skip_kernel: str | None,
    stem: int,
    stem_kernel: int,
    pool: int,
) -> ArchSpec:
    """An ArchSpec from a preset name or from per-stage flags (not both)."""
    if preset is not None:
        if widths is not None:
            fail("give a preset name or --widths, not both")
        try:
            return get_preset(preset)
        except KeyError as e:
            fail(str(e.args[0]))
    if widths is None:
        fail("give a preset name (e.g. zigzag) or --widths and --repeats")
    w = parse_ints("--widths", widths)
    r = parse_ints("--repeats", repeats) or [1]
    try:
        return make_spec(
            w,
            r,
            strides=parse_ints("--strides", strides),
            kernels=parse_ints("--kernels", kernels),
            skip_kernels=parse_ints("--skip-kernel", skip_kernel),
            stem_width=stem,
            stem_kernel=stem_kernel,
            pool=pool,
        )
    except SpecError as e:
        fail(str(e))


# Options of the commands that take an architecture.
PresetArg = Annotated[
    str | None, typer.Argument(help="Architecture preset (zigzag, resnet18-1111, ...).")
]

WidthsOpt = Annotated[str | None, typer.Option(help="Channel widths per stage, e.g. 64,128,256.")]

RepeatsOpt = Annotated[str | None, typer.Option(help="Blocks per stage, e.g. 2,2,2.")]

StridesOpt = Annotated[str | None, typer.Option(help="Stride of each stage (default 1 then 2s).")]

KernelsOpt = Annotated[str | None, typer.Option(help="Conv kernel per stage (3 or 5).")]

SkipOpt = Annotated[
    str | None, typer.Option("--skip-kernel", help="Projection kernel (1 or 3), one or per stage.")
]

StemOpt = Annotated[int, typer.Option(help="Stem width.")]

StemKernelOpt = Annotated[int, typer.Option(help="Stem kernel (3 or 5).")]

PoolOpt = Annotated[int, typer.Option(help="0 for global average pooling, else pool size P.")]


@app.command()
def arch(
    preset: PresetArg = None,
    widths: WidthsOpt = None,
    repeats: RepeatsOpt = None,
    strides: StridesOpt = None,
    kernels: KernelsOpt = None,
    skip_kernel: SkipOpt = None,
    stem: StemOpt = 64,
    stem_kernel: StemKernelOpt = 3,
    pool: PoolOpt = 0,
    max_params: MaxParamsOpt = DEFAULT_MAX_PARAMS,
    as_json: JsonOpt = False,
) -> None:
    """Show an architecture's exact parameter count, FLOPs and budget verdict.

    Exits 0 within the budget and 3 over it.
    """
    spec = spec_from_options(
        preset, widths, repeats, strides, kernels, skip_kernel, stem, stem_kernel, pool
    )
    params, flops = count_params(spec), count_flops(spec)
    within = params <= max_params
    if as_json:
        print(
            json.dumps(
                {
                    "name": spec.name,
                    "params": params,
                    "flops": flops,
                    "convs": count_convs(spec),
                    "max_params": max_params,
                    "within_budget": within,
                    "spec": spec.to_dict(),
                }
            )
        )
    else:
        console.print(f"[bold]{spec.name or 'custom'}[/]  {spec.describe()}", highlight=False)
        console.print(f"params  {params:,}")
        console.print(f"FLOPs   {flops / 1e6:,.1f} M per image (forward)")
        console.print(f"convs   {count_convs(spec)}")
        verdict = (
            f"[green]within budget[/] ({params:,} <= {max_params:,})"
            if within
            else f"[red]over budget[/]: {params:,} > {max_params:,}"
        )
        console.print(verdict)
    if not within:
        raise typer.Exit(EXIT_OVER_BUDGET)


@app.command("train")
def train_command(
    preset: PresetArg = None,
    arch_name: Annotated[str | None, typer.Option("--arch", help="Architecture preset.")] = None,
    widths: WidthsOpt = None,
    repeats: RepeatsOpt = None,
    strides: StridesOpt = None,
    kernels: KernelsOpt = None,
    skip_kernel: SkipOpt = None,
    stem: StemOpt = 64,
    stem_kernel: StemKernelOpt = 3,
    pool: PoolOpt = 0,
    recipe: Annotated[str, typer.Option(help="Named recipe: seed or fast.")] = "fast",
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override the batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the learning rate.")] = None,
    device: DeviceOpt = "auto",
    data: DataOpt = None,
    image_size: ImageSizeOpt = None,
    data_dir: DataDirOpt = None,
    subset: Annotated[int | None, typer.Option(help="Stratified training subset size.")] = None,
    val_size: Annotated[
        int | None,
        typer.Option(help="Validation images (default: a fifth, 10,000 of CIFAR's).", min=0),
    ] = None,
    seed: Annotated[int, typer.Option(help="Split and training seed.")] = 0,
    max_params: MaxParamsOpt = DEFAULT_MAX_PARAMS,
    as_json: JsonOpt = False,
) -> None:
    """Train one architecture with a recipe; report validation and test accuracy."""
    from dataclasses import replace

    from autosearch.search.training.datasets import DataError, describe_source, parse_data
    from autosearch.search.training.run import run_training
    from autosearch.search.training.sources import DataNotFoundError

    if preset is not None and arch_name is not None:
        fail("give the architecture as an argument or with --arch, not both")
    spec = spec_from_options(
        preset or arch_name, widths, repeats, strides, kernels, skip_kernel, stem, stem_kernel, pool
    )
    chosen = _recipe_from_options(recipe, epochs=epochs, batch_size=batch_size, lr=lr)
    try:
        source = parse_data(data, data_dir=data_dir, image_size=image_size)
        facts = describe_source(source, locate=False)  # CIFAR's facts are in its name
    except (DataError, DataNotFoundError) as e:
        fail(str(e))
    # The classifier and the map sizes follow the data, and so does the count.
    spec = replace(spec, num_classes=facts.num_classes, input_size=facts.image_size)
    try:
        check_budget(spec, max_params)  # before any data or GPU work
    except BudgetError as e:
        fail(f"{spec.name or 'architecture'} is over budget: {e}", code=EXIT_OVER_BUDGET)
    try:
        outcome = run_training(
            spec,
            chosen,
            data=source,
            subset=subset,
            val_size=val_size,
            seed=seed,
            device=device,
            on_epoch=None if as_json else _print_epoch,
        )
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    if as_json:
        print(json.dumps(outcome))
        return
    console.print(
        f"{outcome['status']}: val acc {outcome['final_val_acc']:.4f} "
        f"(best {outcome['best_val_acc']:.4f}), test acc {outcome['test_acc']:.4f}, "
        f"{outcome['params']:,} params, {outcome['train_seconds']:.1f} s training on "
        f"{outcome['device']}",
        highlight=False,
    )
    if outcome["status"] == "diverged":
        raise typer.Exit(1)


def _recipe_from_options(name: str, **overrides):
    """The named recipe with the options the user gave (None: keep the recipe's)."""
    try:
        return get_recipe(name).replace(**{k: v for k, v in overrides.items() if v is not None})
    except KeyError as e:
        fail(str(e.args[0]))
    except RecipeError as e:
        fail(str(e))


def _print_epoch(report) -> None:
    console.print(
        f"epoch {report.epoch:>3}  train loss {report.train_loss:.4f} "
        f"acc {report.train_acc:.4f}  val loss {report.val_loss:.4f} "
        f"acc {report.val_acc:.4f}  lr {report.lr:.4g}  {report.images_per_s:,.0f} img/s",
        highlight=False,
    )
