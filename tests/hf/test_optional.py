"""transformers stays optional: without it `import attnres` works and the hf features say what
to install, in one line; with it, nothing is imported until the Auto classes are."""

import subprocess
import sys

BLOCK = "import sys; sys.modules['transformers'] = None; "


def run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_attnres_without_transformers():
    proc = run(BLOCK + "import attnres, torch; m = attnres.DenseLM(attnres.dense_config('tiny')); "
               "print(m(torch.zeros(1, 3, dtype=torch.long)).shape)")
    assert proc.returncode == 0, proc.stderr
    assert "torch.Size([1, 3, 256])" in proc.stdout


def test_convert_without_transformers_is_one_line(tmp_path):
    proc = run(BLOCK + "from attnres.cli import main; "
               f"sys.exit(main(['convert', '--from-hf', {str(tmp_path)!r}, '--out', {str(tmp_path / 'o')!r}]))")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("attnres convert: error: convert needs transformers "
                                   "(transformers missing): pip install 'attnres[hf]'")


def test_import_attnres_does_not_import_transformers_until_asked():
    proc = run("import sys, attnres; print('transformers' in sys.modules); "
               "from transformers import AutoConfig; "
               "print(AutoConfig.for_model('attnres_llama').__class__.__name__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "AttnResLlamaConfig"]


def test_import_attnres_after_transformers_registers_at_once():
    proc = run("from transformers import AutoConfig, AutoModelForCausalLM; import attnres; "
               "print(AutoConfig.for_model('attnres_kimi_linear').__class__.__name__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["AttnResKimiLinearConfig"]
