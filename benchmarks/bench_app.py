"""What the web demo adds to a request: the app's round trip against calling the same pipeline directly, as a table.

    python -m benchmarks.bench_app out [--repeats 3]          # from the repository root; `out` is a training run

Starts `diffkit-app --pipeline OUT` as a user would, times until the page answers, then times requests through
Gradio's Python client (one image per class at the pipeline's defaults, with and without "Show the denoising", and
DDPM with 1000 steps) beside the same `pipe(...)` call in this process. Both use every core; the benchmark runs them
one after the other, never at once, alternating which goes first. Three more rows take the round trip apart: a
1-step request (the app's fixed cost), a request whose images the client does not fetch, and gradio_client's
default certificate checks.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import torch
from gradio_client import Client

from diffkit import ClassConditionalImagePipeline
from diffkit.demo import SAVED_SAMPLER, api_name_for, pipeline_title

STARTUP_TIMEOUT_S = 300


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_app", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="A class-conditional training run (the --output_dir of training/train.py).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed requests per row (the median is shown).")
    parser.add_argument("--port", type=int, default=7899, help="Port for the app under test, on 127.0.0.1.")
    args = parser.parse_args(argv)
    with open(os.path.join(args.output_dir, "model_index.json")) as f:
        if "id2label" not in json.load(f):
            raise ValueError(f"`output_dir` {args.output_dir!r} is not a class-conditional pipeline.")
    if args.repeats < 1:
        raise ValueError(f"`--repeats` must be a positive integer, but is {args.repeats}.")
    return args


def interleaved_medians(first, second, repeats):
    """Median seconds of `first()` and of `second()`, timed in alternating order, so that the machine's drift (other
    tenants, frequency changes) falls on both alike."""
    times = ([], [])
    for round_index in range(repeats):
        order = (0, 1) if round_index % 2 == 0 else (1, 0)
        for which in order:
            start = time.perf_counter()
            (first, second)[which]()
            times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv=None):
    args = parse_args(argv)
    url = f"http://127.0.0.1:{args.port}/"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "diffkit.app", "--pipeline", args.output_dir, "--port", str(args.port)]
    started = time.perf_counter()
    app = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if app.poll() is not None or time.perf_counter() - started > STARTUP_TIMEOUT_S:
                raise RuntimeError(f"the app did not start: {' '.join(command)}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        startup = time.perf_counter() - started
        # The app is plain HTTP on loopback. With certificate checks on (its default), gradio_client loads the CA
        # bundle into a new SSL context for every file it downloads, ~0.1 s of CPU per image, which then competes
        # with the app for the cores; a browser does not pay this. The last row keeps the default.
        client = Client(url, verbose=False, ssl_verify=False)
        default_client = Client(url, verbose=False)
        # the same request without fetching the images: what the server's side of a round trip costs
        no_download_client = Client(url, verbose=False, ssl_verify=False, download_files=False)
        api_name = "/" + api_name_for(pipeline_title(args.output_dir), [])

        pipe = ClassConditionalImagePipeline.from_pretrained(args.output_dir)
        pipe.set_progress_bar_config(disable=True)
        labels = list(pipe.config.id2label.values())
        guidance = pipe.config.guidance_scale
        rows = []
        for name, labels_asked, images_per_label, steps, show, request_client in [
            ("one image per class, 20 steps", labels, 1, 20, False, client),
            ("the same, showing the denoising", labels, 1, 20, True, client),
            ("4 images, 1000 steps", labels[:1], 4, 1000, False, client),
            ("one image per class, 1 step (mostly the app's cost per request)", labels, 1, 1, False, client),
            (
                "one image per class, 20 steps, the client not downloading the images",
                labels,
                1,
                20,
                False,
                no_download_client,
            ),
            (
                "one image per class, 20 steps, gradio_client checking certificates",
                labels,
                1,
                20,
                False,
                default_client,
            ),
        ]:

            def through_app():
                request_client.predict(
                    labels_asked, images_per_label, guidance, steps, SAVED_SAMPLER, 0, show, api_name=api_name
                )

            def direct():
                generators = [torch.Generator().manual_seed(i) for i in range(len(labels_asked) * images_per_label)]
                pipe(
                    class_labels=labels_asked,
                    num_images_per_label=images_per_label,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    generator=generators,
                )

            repeats = 2 if steps > 100 else args.repeats
            app_s, direct_s = interleaved_medians(through_app, direct, repeats)
            rows.append((name, app_s, direct_s))
    finally:
        app.terminate()
        app.wait(timeout=30)

    print(f"app ready after {startup:.1f} s ({torch.get_num_threads()} CPU threads)\n")
    print("| request (DDPM, guidance %g) | app round trip (s) | pipe(...) directly (s) | ratio |" % guidance)
    print("| --- | --- | --- | --- |")
    for name, app_s, direct_s in rows:
        print(f"| {name} | {app_s:.2f} | {direct_s:.2f} | {app_s / direct_s:.2f} |")


if __name__ == "__main__":
    main()
