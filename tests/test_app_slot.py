"""A long evaluation gives the model slot back between chunks: Talk answers meanwhile, and
Cancel stops the evaluation. Real models, a real server, two gradio_client clients."""
from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

from gradio_client import Client, handle_file

pytest_plugins = ["conftest_app"]

CLIPS = 12  # the test server takes uploads of up to 2 MB


def upload(app_server, folder: Path) -> tuple[Path, Path]:
    examples = [json.loads(line) for line in (app_server.examples_dir / "examples.jsonl").read_text().splitlines()]
    manifest, archive = folder / "many.jsonl", folder / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z, manifest.open("w") as out:
        for i in range(CLIPS):
            row = examples[i % len(examples)]
            z.write(app_server.examples_dir / row["audio"], f"c{i:03d}.wav")
            out.write(json.dumps({"audio": f"c{i:03d}.wav", "emotion": row["emotion"]}) + "\n")
    return manifest, archive


def test_talk_answers_while_an_evaluation_runs_and_cancel_stops_it(app_server, tmp_path):
    manifest, archive = upload(app_server, tmp_path)
    evaluator, talker = Client(app_server.url, verbose=False), Client(app_server.url, verbose=False)
    evaluation = evaluator.submit("upload", handle_file(str(manifest)), handle_file(str(archive)),
                                  ["speech_llm", "text_only", "standalone"], CLIPS, api_name="/evaluate")
    deadline = time.time() + 300
    while not evaluation.outputs() and time.time() < deadline:  # the first chunk is done
        time.sleep(0.1)
    assert evaluation.outputs() and not evaluation.done()
    assert f"of {CLIPS} clips" in evaluation.outputs()[-1][0]
    talk = talker.submit(handle_file(str(app_server.examples_dir / "sad_1.wav")), 4, 0.0, "", api_name="/talk")
    outputs = talk.result(timeout=300)
    assert any(outputs[3:6]) and not evaluation.done()  # Talk finished first
    done_before = int(evaluation.outputs()[-1][0].split(" of ")[0].split()[-1])
    evaluation.cancel()
    assert evaluator.predict(api_name="/evaluate_cancel") == "Evaluation cancelled."
    time.sleep(3)
    assert evaluation.done() and done_before < CLIPS
