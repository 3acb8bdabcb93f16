"""Progress: widgets or the console normally, whole lines on the terminal of a headless run."""

from types import SimpleNamespace

from fcdpo.progress import HEADLESS, bar, headless, trainer_callback


def test_a_headless_bar_prints_whole_lines_with_what_is_left(monkeypatch, capsys):
    monkeypatch.setenv(HEADLESS, "1")
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    assert headless()
    with bar(total=4, desc="rollouts math") as progress:
        for _ in range(4):
            progress.update(1)
    lines = capsys.readouterr().out.splitlines()
    assert lines and all("\r" not in line for line in lines)
    assert lines[-1].startswith("rollouts math: 100%") and "4/4" in lines[-1]


def test_without_the_flag_bars_are_tqdms_own(monkeypatch):
    monkeypatch.delenv(HEADLESS, raising=False)
    progress = bar(total=1, disable=True)
    assert not headless() and type(progress).__module__.startswith("tqdm")


def test_the_trainer_callback_reports_steps_and_an_estimate_of_what_is_left():
    lines = []
    callback = trainer_callback(lines.append, "dpo: ", every=5)
    state = SimpleNamespace(global_step=0, max_steps=20)
    callback.on_train_begin(None, state, None)
    for step in range(1, 21):
        state.global_step = step
        callback.on_log(None, state, None, logs={"loss": 0.5})
        callback.on_log(None, state, None, logs={"eval_loss": 0.4})  # not a training loss: no line
    assert [line.split(" · ")[0] for line in lines] == [f"dpo: step {s}/20" for s in (5, 10, 15, 20)]
    assert "about" in lines[0] and "s left" in lines[0]


def test_a_headless_bar_with_a_postfix_prints_at_most_a_line_per_interval(monkeypatch, capsys):
    monkeypatch.setenv(HEADLESS, "1")
    monkeypatch.setenv("TQDM_MININTERVAL", "3600")
    with bar(total=500, desc="rollouts fol") as progress:
        for i in range(500):
            progress.update(1)
            progress.set_postfix(accuracy=f"{i / 5:.1f}%")  # forces a redraw every time
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= 3 and lines[-1].startswith("rollouts fol: 100%") and "500/500" in lines[-1]
