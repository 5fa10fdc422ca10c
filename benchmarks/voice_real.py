"""Voice conversion on voices recorded from real speakers (Festival's Italian diphone voices).

Renders one list of sentences with a male (pc_diphone) and a female (lp_diphone) voice, both
concatenations of real recorded diphones: the training sentences are split in halves, A (the
male voice) says one half and B (the female voice) the other, so the folders are unpaired; the
held-out sentences are said by both, so every conversion has its true target. Then it reports:

- ``decoders``: the round trip wave -> encoder -> decoder -> wave with no model (the ceiling
  of any conversion), PESQ-WB and STOI, for the mel pseudo-inverse, the mel encoder's learned
  decoder and the stft encoder, each fitted on B's training folder as a run fits it;
- ``convert``: a voice run trained on A and B (``--model``, ``--preset``, ``--minutes``)
  converts the held-out A sentences, measured against B saying them: MCD-DTW, median F0 and
  F0 progress, speaker similarity to B (resemblyzer), DNSMOS overall and P.808, and the
  real-time factor of converting a 10 s file.

    python benchmarks/voice_real.py --data /tmp/voice-real decoders
    python benchmarks/voice_real.py --data /tmp/voice-real convert --preset fast --minutes 10
    python benchmarks/voice_real.py --data /tmp/voice-real convert --model cyclegan   # the GAN
    python benchmarks/voice_real.py --data /tmp/voice-real convert --run runs/it   # a run
    python benchmarks/voice_real.py --data /tmp/voice-more --more-speech convert  # 4.1 min a voice

Needs Festival with the two voices (``apt-get install festival festvox-itapc16k
festvox-italp16k``) to render the data once, and the measurement packages of the ``bench``
extra (``pip install "styletx[bench]"``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import styletx

VOICES = {"a": "pc_diphone", "b": "lp_diphone"}  # male, female (Italian diphone voices)
INSTALL = "apt-get install -y festival festvox-itapc16k festvox-italp16k"
BENCH_EXTRA = 'pip install "styletx[bench]"  (pesq, pystoi, speechmos, resemblyzer)'
RATE = 16000  # Hz: PESQ-WB, STOI, DNSMOS and resemblyzer all measure at 16 kHz
MCD_RATE = 22050  # Hz: MCD and F0 as styletx's own evaluation measures them
RTF_SECONDS = 10.0  # the real-time factor is measured on a file this long
HELD_OUT = 8  # the last sentences: said by both voices, for testing

SENTENCES = [
    "Il treno del mattino era di nuovo in ritardo, così abbiamo camminato lungo il fiume.",
    "Per favore metti la cartella blu sul secondo scaffale vicino alla finestra.",
    "Una piccola barca passava lentamente sotto il vecchio ponte di pietra.",
    "Ha dipinto il recinto di bianco prima che arrivasse la pioggia d'estate.",
    "I nostri vicini coltivano pomodori, fagioli e peperoni gialli.",
    "La biblioteca chiude alle sei nei giorni feriali e a mezzogiorno il sabato.",
    "Ha dimenticato l'ombrello ed è tornato a casa bagnato fradicio.",
    "Ogni sera i bambini contano le stelle sopra la collina.",
    "La ricetta chiede due uova, una tazza di farina e un pizzico di sale.",
    "Gira a sinistra dopo il forno e vedrai la porta verde.",
    "Quell'anno l'inverno arrivò presto e il lago gelò a novembre.",
    "Il vecchio orologio nel corridoio suona ancora ogni ora.",
    "Abbiamo preparato panini e mele per il lungo viaggio verso nord.",
    "La maestra ha chiesto a tutti di leggere ad alta voce il primo capitolo.",
    "Un vento leggero portava il profumo del pane fresco lungo la strada.",
    "Il concerto è stato spostato al chiuso a causa del temporale.",
    "Mio fratello ha riparato la bicicletta con molta pazienza.",
    "Lanterne luminose pendevano da ogni albero del giardino silenzioso.",
    "Il museo ha aperto una nuova sala piena di mappe antiche.",
    "Nessuno sapeva chi avesse lasciato i fiori sulla soglia.",
    "Il gatto ha dormito tutto il pomeriggio in una macchia di sole.",
    "La neve fresca copriva la strada di montagna fin dal mattino.",
    "Hanno piantato una fila di giovani querce lungo il sentiero.",
    "Il mercato vende miele, formaggio e pane il giovedì.",
    "La sua lettera è arrivata tre settimane dopo averla spedita.",
    "Il faro guidava le barche dei pescatori verso casa.",
    "Ascoltavamo la radio mentre la minestra cuoceva.",
    "Gli escursionisti si sono riposati vicino a una cascata prima dell'ultima salita.",
    "Un aquilone rosso danzava alto sopra la spiaggia affollata.",
    "L'ufficio si è trasferito in un palazzo luminoso vicino alla stazione.",
    "Ha scritto il numero di telefono sul retro di una busta.",
    "L'orchestra accordava gli strumenti nella sala grande.",
    "Nuvole dense arrivarono dal mare dopo pranzo.",
    "Il fornaio apre il negozio prima che sorga il sole.",
    "Ha trovato una vecchia fotografia nascosta dentro il libro.",
    "L'autobus si ferma davanti alla scuola ogni venti minuti.",
    "Ricordati di annaffiare le piante mentre sono via.",
    "I viaggiatori attraversarono il deserto sotto una luna d'argento.",
    "Un fuoco caldo scoppiettava nell'angolo della baita.",
    "Il cancello del giardino cigola ogni volta che qualcuno lo apre.",
    "Il paese festeggia la vendemmia con musica e balli.",
    "Ha misurato il tavolo due volte prima di tagliare il legno.",
    "Il fiume è salito in fretta dopo tre giorni di pioggia forte.",
    "Il nostro treno parte dal binario nove alle quattro e mezza.",
    "Il cagnolino abbaiava a ogni uccello del parco.",
    "Hanno diviso una teiera di tè e hanno parlato fino a mezzanotte.",
    "La mappa mostrava un sentiero stretto attraverso il bosco.",
    "Ha imparato a suonare il violino quando aveva sette anni.",
    "Domani mattina andremo al mercato a comprare frutta e verdura.",
    "Il medico ha detto che deve riposare per qualche giorno.",
    "Le finestre della cucina guardano sul cortile interno.",
    "Abbiamo perso l'ultimo autobus e siamo tornati a piedi.",
    "La nonna racconta sempre storie della sua infanzia in campagna.",
    "Il ristorante all'angolo prepara una pizza eccellente.",
    "Durante l'estate le giornate sono lunghe e calde.",
    "Il pittore ha finito il ritratto dopo molti mesi di lavoro.",
    "Nel porto le navi aspettano il vento favorevole.",
    "I ragazzi giocano a calcio nel campo dietro la chiesa.",
    "Ho lasciato le chiavi sul tavolo della cucina.",
    "La strada per il castello sale tra vigne e ulivi.",
    "Lo studente ha consegnato il compito in anticipo.",
    "Il negozio di scarpe è chiuso per ferie fino a lunedì.",
    # held out: said by both voices
    "La volpe veloce salta sopra il cane pigro vicino al fienile.",
    "Vorrei un caffè e una fetta di torta di mele, per favore.",
    "Le previsioni del tempo promettono sole per tutto il fine settimana.",
    "Mi sa dire dov'è l'ufficio postale più vicino?",
    "Il giardiniere taglia l'erba ogni sabato mattina.",
    "La città si riempie di turisti nei mesi estivi.",
    "Mia sorella lavora in un ospedale vicino al mare.",
    "Il libro che mi hai prestato è davvero interessante.",
]


# --more-speech: training sentences beyond SENTENCES' (4.1 min a voice in all, not 1.8)
MORE_SENTENCES = [
    "Il postino suona due volte quando porta un pacco pesante.",
    "La farmacia della piazza resta aperta anche la domenica.",
    "Abbiamo visto un arcobaleno sopra le colline dopo il temporale.",
    "Il cuoco ha aggiunto basilico fresco alla salsa di pomodoro.",
    "Le rondini tornano ogni primavera sotto il tetto della stalla.",
    "Mio zio costruisce barche di legno nel suo piccolo cantiere.",
    "La lezione di storia è durata più del previsto.",
    "Il sindaco ha inaugurato il nuovo parco vicino al fiume.",
    "Ogni mattina bevo un bicchiere d'acqua prima di colazione.",
    "La sarta ha accorciato i pantaloni in meno di un'ora.",
    "I turisti fotografavano la torre dalla piazza principale.",
    "Il temporale ha spento le luci di tutto il quartiere.",
    "Abbiamo comprato un tappeto rosso per il salotto.",
    "La squadra ha vinto la partita all'ultimo minuto.",
    "Il contadino raccoglie le olive alla fine di ottobre.",
    "Ho dimenticato di chiudere la finestra della camera.",
    "Il traghetto per l'isola parte ogni mattina alle otto.",
    "La professoressa ha spiegato la lezione con molta calma.",
    "Un gruppo di ciclisti attraversava il ponte sul torrente.",
    "La pasticceria vende biscotti alle mandorle e torte di riso.",
    "Il vento ha rovesciato i vasi sul balcone.",
    "Mia cugina studia medicina all'università di Bologna.",
    "Il cinema del paese proietta film vecchi il mercoledì.",
    "Le campane della chiesa suonano a mezzogiorno in punto.",
    "Abbiamo passato la notte in un rifugio di montagna.",
    "Il pescatore ha riparato la rete seduto sul molo.",
    "La lampada della scrivania si è rotta ieri sera.",
    "Gli studenti hanno organizzato una festa per la fine dell'anno.",
    "Il treno regionale si ferma in tutte le stazioni.",
    "La pioggia battente ha allagato la cantina.",
    "Il bambino ha costruito un castello di sabbia sulla spiaggia.",
    "Il parrucchiere apre alle nove e chiude alle sette.",
    "Ho letto il giornale seduto al tavolino del bar.",
    "Il giardino botanico ospita piante da tutto il mondo.",
    "Mio padre prepara il caffè con la vecchia moka.",
    "La nebbia copriva la pianura fino a mezzogiorno.",
    "Il meccanico ha cambiato le gomme della macchina.",
    "La zia ha portato una crostata di albicocche.",
    "Le foglie gialle cadevano lentamente sul viale.",
    "Il concerto di beneficenza ha raccolto molti soldi.",
    "Abbiamo dipinto la cucina di un giallo chiaro.",
    "Il cane del vicino dorme sempre davanti al cancello.",
    "La nave da crociera è entrata nel porto all'alba.",
    "Il vigile ha fermato il traffico per far passare la scuola.",
    "Ogni inverno andiamo a sciare sulle Alpi.",
    "La bibliotecaria mi ha consigliato un romanzo giallo.",
    "Il fuoco d'artificio ha illuminato il cielo sopra il lago.",
    "Il falegname ha costruito una libreria su misura.",
    "La mattina presto il mercato del pesce è già affollato.",
    "Mio nonno coltiva rose nel giardino dietro casa.",
    "Il corriere ha lasciato il pacco dal portiere.",
    "La gara di corsa parte dalla piazza del municipio.",
    "Abbiamo mangiato gli spaghetti alle vongole in riva al mare.",
    "La luna piena si rifletteva sull'acqua del canale.",
    "Il dentista mi ha dato appuntamento per giovedì.",
    "Le api ronzavano tra i fiori di lavanda.",
    "Il professore ha corretto gli esami durante il fine settimana.",
    "Una lunga coda di macchine aspettava al casello.",
    "La mia vicina suona il pianoforte ogni sera.",
    "Il ghiaccio sul lago era abbastanza spesso per pattinare.",
    "Hanno aperto una nuova libreria accanto alla posta.",
    "Il gelataio prepara il gelato al pistacchio ogni giorno.",
    "La tempesta ha abbattuto due alberi nel parco.",
    "Ho prenotato un tavolo per quattro persone alle otto.",
    "Il pastore guidava le pecore giù dalla montagna.",
    "La sala d'attesa era piena di gente stanca.",
    "Il ciclista si è fermato a bere alla fontana.",
    "Mia madre ha cucito una coperta di lana per l'inverno.",
    "Il vecchio mulino sul fiume è diventato un museo.",
    "La banda del paese suona in piazza la domenica.",
    "Abbiamo visto i delfini saltare vicino alla barca.",
    "Il fruttivendolo vende ciliegie dolcissime a giugno.",
    "La scuola resterà chiusa per la neve.",
    "Il ragazzo ha perso il portafoglio sull'autobus.",
    "Le luci della città brillavano sotto la collina.",
    "Il vino di quest'anno sarà pronto a primavera.",
    "La segretaria ha spedito le lettere prima di pranzo.",
    "Il sentiero costeggia il lago fino al villaggio.",
    "Ho trovato un gattino infreddolito sotto la macchina.",
    "La fiera del libro si tiene ogni anno a maggio.",
    "Il calzolaio ha riparato i miei stivali in un giorno.",
    "La cena era pronta quando siamo arrivati a casa.",
    "Un vecchio pescatore raccontava storie di mare.",
    "Il giardiniere ha potato le siepi del cortile.",
    "La radio annunciava traffico intenso in autostrada.",
    "Le colline toscane sono verdi in primavera.",
    "Il pittore ha esposto i suoi quadri in una piccola galleria.",
    "Abbiamo acceso il camino per la prima volta quest'anno.",
    "La stazione era deserta a quell'ora di notte.",
    "Il maestro di musica ha diretto il coro della scuola.",
    "Le nuvole si sono aperte e il sole è tornato.",
    "Il pane appena sfornato profumava tutta la via.",
    "Mio fratello ha trovato lavoro in una fabbrica di biciclette.",
    "La ragazza ha raccolto conchiglie lungo la riva.",
    "Il circo è arrivato in città con elefanti e giocolieri.",
    "Abbiamo festeggiato il compleanno della nonna in giardino.",
]


# -- data ------------------------------------------------------------------------------------

def split_sentences(sentences: list[str], held_out: int) -> dict[str, list[str]]:
    """Folder name -> its sentences: the training sentences alternately to ``a`` and ``b``
    (unpaired halves), the last ``held_out`` to both ``test_a`` and ``test_b``."""
    if not 0 < held_out < len(sentences) - 1:
        raise ValueError(f"need 1 to {len(sentences) - 2} held-out sentences, got {held_out}")
    train, test = sentences[:-held_out], sentences[-held_out:]
    return {"a": train[0::2], "b": train[1::2], "test_a": test, "test_b": test}


def sentence_list(more_speech: bool) -> list[str]:
    """SENTENCES, or with ``more_speech`` MORE_SENTENCES inserted before the held-out ones: the
    same held-out test and the same first training files, more training files after them."""
    if not more_speech:
        return SENTENCES
    return SENTENCES[:-HELD_OUT] + MORE_SENTENCES + SENTENCES[-HELD_OUT:]


def render_data(data: Path, more_speech: bool = False) -> None:
    """The four folders of ``split_sentences`` under ``data`` as 16 kHz WAVs, and the sentences
    in ``data/SENTENCES.json``, written last: an interrupted rendering starts again. A folder
    rendered from the other sentence list is an error, not a silent mix."""
    sentences = sentence_list(more_speech)
    folders = split_sentences(sentences, HELD_OUT)
    done = data / "SENTENCES.json"
    if done.exists():
        if json.loads(done.read_text()) != folders:
            flag = "without" if more_speech else "with"
            raise SystemExit(f"{data} holds the data rendered {flag} --more-speech: "
                             f"pass another --data")
        return
    if shutil.which("text2wave") is None:
        raise SystemExit(f"Festival's text2wave is not installed: {INSTALL}")
    for folder, texts in folders.items():
        (data / folder).mkdir(parents=True, exist_ok=True)
        prefix = "held" if folder.startswith("test") else folder
        for i, text in enumerate(texts):
            speak(text, VOICES[folder[-1]], data / folder / f"{prefix}_{i:02d}.wav")
    done.write_text(json.dumps(folders, indent=1, ensure_ascii=False))
    print(f"rendered {len(sentences)} sentences with {VOICES} into {data}")


def speak(text: str, voice: str, path: Path) -> None:
    """``text`` said by Festival's ``voice`` into the WAV ``path``."""
    with tempfile.NamedTemporaryFile("wb", suffix=".txt") as script:
        script.write(text.encode("latin-1"))  # Festival's Italian voices read ISO-8859-1
        script.flush()
        subprocess.run(["text2wave", "-eval", f"(voice_{voice})", "-o", str(path), script.name],
                       check=True, capture_output=True)
    if not path.exists() or path.stat().st_size < 1000:  # an unknown voice: exit 0, no file
        raise SystemExit(f"Festival has no voice {voice!r}: {INSTALL}")


def load(path: Path, rate: int) -> np.ndarray:
    import librosa

    return librosa.load(path, sr=rate)[0]


# -- measurements ----------------------------------------------------------------------------

def bench_packages():
    """The measurement modules of the ``bench`` extra, or exit naming it."""
    try:
        import pesq
        import pystoi
        import resemblyzer
        import speechmos.dnsmos
    except ImportError as exc:
        raise SystemExit(f"{exc.name} is missing: {BENCH_EXTRA}") from None
    return pesq, pystoi, resemblyzer, speechmos.dnsmos


def intelligibility(reference: np.ndarray, degraded: np.ndarray) -> dict[str, float]:
    """PESQ-WB and STOI of ``degraded`` against ``reference`` (both at ``RATE``)."""
    pesq, pystoi, _, _ = bench_packages()
    n = min(len(reference), len(degraded))
    return {"pesq_wb": float(pesq.pesq(RATE, reference[:n], degraded[:n], "wb")),
            "stoi": float(pystoi.stoi(reference[:n], degraded[:n], RATE))}


def naturalness(wave: np.ndarray) -> dict[str, float]:
    """DNSMOS overall and P.808 MOS of a wave at ``RATE``."""
    *_, dnsmos = bench_packages()
    scores = dnsmos.run(np.clip(wave, -1, 1), RATE)
    return {"dnsmos_ovrl": float(scores["ovrl_mos"]), "dnsmos_p808": float(scores["p808_mos"])}


class SpeakerSimilarity:
    """Cosine similarity of an utterance's resemblyzer embedding to a speaker's, the speaker
    embedded from a folder of their recordings."""

    def __init__(self, folder: Path):
        *_, resemblyzer, _ = bench_packages()
        self.resemblyzer = resemblyzer
        self.model = resemblyzer.VoiceEncoder("cpu", verbose=False)
        self.speaker = self.model.embed_speaker(
            [resemblyzer.preprocess_wav(load(f, RATE), RATE) for f in sorted(folder.glob("*"))])

    def __call__(self, wave: np.ndarray) -> float:
        utterance = self.model.embed_utterance(self.resemblyzer.preprocess_wav(wave, RATE))
        return float(np.dot(utterance, self.speaker))  # both have unit length


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


# -- decoders: the round trip without a model ------------------------------------------------

def decoders(data: Path) -> dict[str, dict[str, float]]:
    """Round-trip PESQ-WB, STOI and DNSMOS on the held-out B sentences per decoder, each
    fitted on B (the real recordings' DNSMOS is in ``convert``'s "target" row)."""
    from styletx.plugins.audio import AudioDomain, MelEncoder, StftEncoder
    from styletx.plugins.world import WorldEncoder

    domain = AudioDomain()
    training = [domain.prepare_for_training(domain.load(f), 0)
                for f in sorted((data / "b").glob("*"))]
    candidates = {"mel 80, pseudo-inverse, GL 32": MelEncoder(n_mels=80, decoder_epochs=0,
                                                              gl_iters=32),
                  "mel 80, learned, GL 32": MelEncoder(n_mels=80, gl_iters=32),
                  "mel 80, learned, GL 64": MelEncoder(n_mels=80, gl_iters=64),
                  "mel 128, pseudo-inverse, GL 32": MelEncoder(n_mels=128, decoder_epochs=0,
                                                               gl_iters=32),
                  "mel 128, pseudo-inverse, GL 64": MelEncoder(n_mels=128, decoder_epochs=0,
                                                               gl_iters=64),
                  "mel 128, learned, GL 64": MelEncoder(n_mels=128, gl_iters=64),
                  "stft, GL 32": StftEncoder(gl_iters=32),
                  "stft, GL 64": StftEncoder(gl_iters=64),
                  "world (36 dims, 10 ms)": WorldEncoder()}
    results = {}
    for name, encoder in candidates.items():
        started = time.perf_counter()
        encoder.fit(training)
        fit_seconds = time.perf_counter() - started
        rows = [decoder_metrics(load(f, RATE), round_trip(encoder, domain.load(f)))
                for f in sorted((data / "test_b").glob("*"))]
        results[name] = {**mean_rows(rows), "fit_s": fit_seconds}
        print(f"{name:<30}" + "".join(f"{k} {v:.3f}  " for k, v in results[name].items()))
    return results


def decoder_metrics(original: np.ndarray, decoded: np.ndarray) -> dict[str, float]:
    return {**intelligibility(original, decoded), **naturalness(decoded)}


def round_trip(encoder, sample) -> np.ndarray:
    """``sample`` encoded and decoded, at ``RATE``."""
    import librosa

    decoded = encoder.decode(encoder.encode(sample), like=sample)
    return librosa.resample(decoded.wave, orig_sr=decoded.rate, target_sr=RATE)


# -- conversion ------------------------------------------------------------------------------

def train(data: Path, run: Path, preset: str, minutes: float | None, steps: int | None,
          encoder: str | None = None, model: str | None = None) -> float:
    """A voice model (``model``, default: the audio domain's) trained on ``a`` and ``b``;
    returns the wall-clock seconds."""
    started = time.perf_counter()
    styletx.train(data / "a", data / "b", run, model=model, preset=preset, encoder=encoder,
                  settings=styletx.TrainSettings(minutes=minutes, steps=steps, progress=False,
                                                 device="cpu"))
    return time.perf_counter() - started


def convert_metrics(data: Path, run: Path, out: Path, pseudo_inverse: bool = False,
                    post_filter: bool = True, frame_matching: bool = True,
                    vocoder: str | None = None) -> dict[str, dict[str, float]]:
    """The held-out A sentences converted by ``run``, measured against B saying them; the
    untouched source and the real target are measured alike, for reference. With
    ``pseudo_inverse`` the run's learned decoder is left out (as styletx decoded before it);
    without ``post_filter`` the voice generator's post-filter is, without ``frame_matching``
    its matching sets (as it converted before each);
    ``vocoder`` is convert's --vocoder (None: the run's default; the world encoder has no
    choice)."""
    model = styletx.load_run(run, device="cpu", vocoder=vocoder)
    if model.translator.name == "match" and not frame_matching:
        raise SystemExit("--no-frame-matching: a match run converts by its matching sets only")
    if pseudo_inverse:
        for encoder in model.encoders.values():
            encoder.decoder, encoder.params["gl_iters"] = None, 32
    left_out = (() if post_filter else ("P_A", "P_B")) + (() if frame_matching else ("M_A", "M_B"))
    for name in left_out:
        if getattr(model.translator, name, None) is not None:
            getattr(model.translator, name).reset()
    model.convert_files([data / "test_a"], out)
    similarity = SpeakerSimilarity(data / "b")
    rows: dict[str, list[dict[str, float]]] = {"source": [], "converted": [], "target": []}
    for target in sorted((data / "test_b").glob("*.wav")):
        paths = {"source": data / "test_a" / target.name, "converted": out / target.name,
                 "target": target}
        f0_target = median_f0_of(target)
        for kind, path in paths.items():
            rows[kind].append(utterance_metrics(path, target, similarity, f0_target))
    table = {kind: mean_rows(r) for kind, r in rows.items()}
    f0 = {kind: table[kind]["median_f0"] for kind in table}
    table["converted"]["f0_progress"] = ((f0["converted"] - f0["source"])
                                         / (f0["target"] - f0["source"]))
    if not pseudo_inverse and post_filter and frame_matching:
        table["converted"]["rtf_10s"] = real_time_factor(data, run, out, vocoder)
    return table


def median_f0_of(path: Path) -> float:
    from styletx.audio.metrics import median_f0

    return median_f0(load(path, MCD_RATE), MCD_RATE)


def utterance_metrics(path: Path, target: Path, similarity: SpeakerSimilarity,
                      f0_target: float) -> dict[str, float]:
    from styletx.audio.metrics import mcd

    wave = load(path, RATE)
    return {"mcd_db": mcd(load(path, MCD_RATE), load(target, MCD_RATE), MCD_RATE),
            "median_f0": median_f0_of(path), "speaker_sim": similarity(wave), **naturalness(wave)}


def real_time_factor(data: Path, run: Path, work: Path, vocoder: str | None) -> float:
    """Seconds to convert a ``RTF_SECONDS`` file (held-out A sentences joined), loading the
    run included, over its duration."""
    import soundfile as sf

    waves = [load(f, RATE) for f in sorted((data / "test_a").glob("*.wav"))]
    long = np.concatenate(waves * 3)[: int(RTF_SECONDS * RATE)]
    source = work / "rtf" / "ten_seconds.wav"
    source.parent.mkdir(parents=True, exist_ok=True)
    sf.write(source, long, RATE)
    started = time.perf_counter()
    styletx.load_run(run, device="cpu", vocoder=vocoder).convert_files([source],
                                                                       work / "rtf-out")
    return (time.perf_counter() - started) / RTF_SECONDS


def print_table(table: dict[str, dict[str, float]]) -> None:
    keys = sorted({k for row in table.values() for k in row}, key=list(table["converted"]).index)
    print(f"{'':<11}" + "".join(f"{k:>13}" for k in keys))
    for kind, row in table.items():
        print(f"{kind:<11}" + "".join(f"{row[k]:>13.3f}" if k in row else f"{'':>13}"
                                      for k in keys))


# -- command line ----------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["decoders", "convert", "data"])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "voice-real")
    parser.add_argument("--run", type=Path, help="convert: evaluate this run, train none")
    parser.add_argument("--model", help="convert: train this translator (default: the audio "
                                        "domain's, match)")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--steps", type=int, help="instead of --minutes")
    parser.add_argument("--encoder", help="convert: train with this encoder (default: the "
                                          "domain's choice, mel)")
    parser.add_argument("--pseudo-inverse", action="store_true",
                        help="convert: decode without the run's learned decoder")
    parser.add_argument("--no-post-filter", action="store_true",
                        help="convert: without the voice generator's post-filter")
    parser.add_argument("--no-frame-matching", action="store_true",
                        help="convert: without the voice generator's frame matching")
    parser.add_argument("--vocoder", choices=["griffinlim", "world"],
                        help="convert: convert's --vocoder (default: Griffin-Lim for mel and "
                             "stft runs)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--more-speech", action="store_true",
                        help="render MORE_SENTENCES too (4.1 min of training speech a "
                             "voice, not 1.8; into its own --data folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    render_data(args.data, args.more_speech)
    if args.what == "data":
        return
    bench_packages()  # before any long work: say now what is missing
    if args.what == "decoders":
        results = decoders(args.data)
    else:
        work = Path(tempfile.mkdtemp(prefix="voice-real-"))
        run = args.run
        if run is None:
            run = work / "run"
            seconds = train(args.data, run, args.preset, None if args.steps else args.minutes,
                            args.steps, args.encoder, args.model)
            print(f"trained --preset {args.preset} in {seconds:.0f} s: {run}")
        results = convert_metrics(args.data, run, work / "converted", args.pseudo_inverse,
                                  not args.no_post_filter, not args.no_frame_matching,
                                  args.vocoder)
        print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
