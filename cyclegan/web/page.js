// The page that `python -m cyclegan.export_web` writes: x, G(x) and F(G(x)) computed in the browser by
// ONNX Runtime Web (WebGPU where the browser has an adapter, WASM otherwise), from files in this folder only.
// For automation: ?direction=A2B|B2A&identity=1|0 (&backend=wasm, &threads=N); G(x) is drawn into
// canvas#gx, F(G(x)) into canvas#fgx, and document.body.dataset.status becomes "done" or "error".

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MIN_SIDE = 8;  // the exported graph reflect-pads each side to a multiple of 4, which needs a few pixels

let ort, backend, threads, manifest;
let picture = null;   // {pixels: ImageData of x, note: what happened to its size}
const sessions = new Map();

function setStatus(status) { document.body.dataset.status = status; }

function say(text, error = false) {
  $('message').textContent = text;
  $('message').className = error ? 'error' : '';
}

function fail(error) {
  console.error(error);
  say(`Error: ${error && error.message ? error.message : error}`, true);
  setStatus('error');
}

function currentModel() {
  const models = manifest.models;
  if (!$('identity-toggle').hidden) return models.find((m) => m.identity === $('identity').checked);
  return models[Number($('model').value) || 0];
}

function currentDirection() { return document.querySelector('input[name=direction]:checked').value; }

function domains(model, direction) {
  return direction === 'A2B' ? [model.domains.A, model.domains.B] : [model.domains.B, model.domains.A];
}

function buildControls() {
  const models = manifest.models;
  const wanted = params.get('direction') === 'B2A' ? 'B2A' : 'A2B';
  for (const direction of ['A2B', 'B2A']) {
    const label = document.createElement('label');
    label.innerHTML = `<input type="radio" name="direction" value="${direction}"> <span></span> `;
    label.querySelector('input').checked = direction === wanted;
    $('directions').append(label);
  }
  // Two models, one trained with identity loss and one without: the app's checkbox. Otherwise a list.
  if (models.length === 2 && models[0].identity !== models[1].identity) {
    $('identity-toggle').hidden = false;
    $('identity').checked = params.get('identity') !== '0';
  } else if (models.length > 1) {
    $('model-choice').hidden = false;
    models.forEach((m, i) => $('model').append(new Option(m.name, String(i))));
    const i = models.findIndex((m) => m.identity === (params.get('identity') !== '0'));
    if (params.has('identity') && i >= 0) $('model').value = String(i);
  }
  labelDirections();
}

function labelDirections() {
  const model = currentModel();
  for (const input of document.querySelectorAll('input[name=direction]')) {
    input.nextElementSibling.textContent = domains(model, input.value).join(' → ');
  }
}

async function loadRuntime() {
  let gpu = false;
  if (manifest.webgpu && params.get('backend') !== 'wasm' && navigator.gpu) {
    try { gpu = Boolean(await navigator.gpu.requestAdapter()); } catch { gpu = false; }
  }
  backend = gpu ? 'webgpu' : 'wasm';
  ort = await import(gpu ? './ort/ort.webgpu.min.mjs' : './ort/ort.wasm.min.mjs');
  ort.env.wasm.wasmPaths = new URL('ort/', location.href).href;
  // Threads share memory, which browsers allow only on cross-origin isolated pages (COOP/COEP headers).
  const cores = navigator.hardwareConcurrency || 1;
  threads = crossOriginIsolated ? Math.max(1, Number(params.get('threads')) || Math.min(4, cores)) : 1;
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.proxy = !gpu;  // WASM in a worker: the page stays responsive during a translation of seconds
  const where = gpu ? 'WebGPU' : `WASM on the CPU, ${threads} thread${threads > 1 ? 's' : ''}`;
  $('backend').textContent = `Runs on ${where} (${manifest.runtime}).` + (crossOriginIsolated || gpu ? '' :
    ' More threads need a cross-origin isolated page: serve it with the COOP/COEP headers shown in docs/app.md of cyclegan-kit.');
  document.body.dataset.backend = backend;
  document.body.dataset.threads = String(threads);
}

function session(model, direction) {
  const key = `${model.name}/${direction}`;
  if (!sessions.has(key)) {
    // On WebGPU, any operator it lacks runs on the CPU (WASM) instead of failing the session.
    const providers = backend === 'webgpu' ? ['webgpu', 'wasm'] : ['wasm'];
    const created = ort.InferenceSession.create(model.generators[direction], {executionProviders: providers});
    created.catch(() => sessions.delete(key));  // a failed load is tried again next time
    sessions.set(key, created);
  }
  return sessions.get(key);
}

async function loadPicture(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, {imageOrientation: 'from-image'});
  } catch {
    throw new Error(`cannot read ${file.name || 'the file'} as an image`);
  }
  let [width, height] = [bitmap.width, bitmap.height];
  let note = '';
  const scale = manifest.max_side / Math.max(width, height);
  if (scale < 1) {
    note = `Scaled down from ${width}×${height}: this page translates images up to ${manifest.max_side} px ` +
           'on the longer side.';
    [width, height] = [Math.max(1, Math.round(width * scale)), Math.max(1, Math.round(height * scale))];
  }
  if (Math.min(width, height) < MIN_SIDE) throw new Error(`the image is ${width}×${height}; both sides need at least ${MIN_SIDE} px`);
  const canvas = $('x');
  [canvas.width, canvas.height] = [width, height];
  const context = canvas.getContext('2d', {willReadFrequently: true});
  context.fillStyle = '#fff';  // transparency on white, as the Python side reads images
  context.fillRect(0, 0, width, height);
  context.imageSmoothingQuality = 'high';
  context.drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  return {pixels: context.getImageData(0, 0, width, height), note};
}

function toTensor({data, width, height}) {
  const n = width * height, values = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) values[c * n + i] = data[4 * i + c] / 127.5 - 1;
  }
  return new ort.Tensor('float32', values, [1, 3, height, width]);
}

// As cyclegan.data.to_image: clamp to [-1, 1] and round (Uint8ClampedArray clamps and rounds half to even, as torch).
function draw(id, tensor) {
  const [, , height, width] = tensor.dims, n = width * height, y = tensor.data;
  const image = new ImageData(width, height);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) image.data[4 * i + c] = (y[c * n + i] + 1) * 127.5;
    image.data[4 * i + 3] = 255;
  }
  const canvas = $(id);
  [canvas.width, canvas.height] = [width, height];
  canvas.getContext('2d').putImageData(image, 0, 0);
  return image;
}

async function translate() {
  if (!picture) return;
  setStatus('running');
  $('again').disabled = true;
  const model = currentModel(), direction = currentDirection();
  const [source, target] = domains(model, direction);
  try {
    say(`${picture.note} Translating ${source} → ${target}…`.trim());
    const [G, F] = await Promise.all([session(model, direction), session(model, direction === 'A2B' ? 'B2A' : 'A2B')]);
    const x = toTensor(picture.pixels);
    let start = performance.now();
    const fake = (await G.run({[G.inputNames[0]]: x}))[G.outputNames[0]];
    const secondsG = (performance.now() - start) / 1000;
    draw('gx', fake);
    start = performance.now();
    const rec = (await F.run({[F.inputNames[0]]: fake}))[F.outputNames[0]];
    const secondsF = (performance.now() - start) / 1000;
    const drawn = draw('fgx', rec).data, original = picture.pixels.data;
    let sum = 0;
    for (let i = 0; i < drawn.length; i++) if (i % 4 !== 3) sum += Math.abs(drawn[i] - original[i]);
    const error = sum / (drawn.length * 3 / 4) / 127.5;
    const {width, height} = picture.pixels;
    $('summary').textContent = `${source} → ${target} with ${model.name} · ${width}×${height} px · ` +
      `cycle error mean |x − F(G(x))| = ${error.toFixed(4)} (images in [-1, 1]) · ` +
      `G(x) ${secondsG.toFixed(2)} s, F(G(x)) ${secondsF.toFixed(2)} s on ${backend === 'webgpu' ? 'WebGPU' : 'WASM'}`;
    say(picture.note || 'Done. The first run of each model includes setting it up; "Run again" times it warm.');
    Object.assign(document.body.dataset, {secondsG: secondsG.toFixed(4), secondsF: secondsF.toFixed(4),
                                          cycleError: error.toFixed(6)});
    setStatus('done');
  } catch (error) {
    fail(error);
  } finally {
    $('again').disabled = false;
  }
}

// One translation at a time; a change while one runs asks for one more run with the latest choices.
let queued = 0, chain = Promise.resolve();
function request() {
  const id = ++queued;
  chain = chain.then(() => (id === queued ? translate() : undefined));
}

async function choose(file) {
  if (!file) return;
  try {
    setStatus('running');
    await ready;
    picture = await loadPicture(file);
    request();
  } catch (error) {
    fail(error);
  }
}

const ready = (async () => {
  manifest = await (await fetch('models.json')).json();
  buildControls();
  await loadRuntime();
})();

ready.then(() => {
  say(`Choose an image to translate: up to ${manifest.max_side} px on the longer side (larger ones are scaled down).`);
  setStatus('ready');
}, fail);
$('file').addEventListener('change', (event) => choose(event.target.files[0]));
$('directions').addEventListener('change', () => { labelDirections(); request(); });
$('identity').addEventListener('change', () => { labelDirections(); request(); });
$('model').addEventListener('change', () => { labelDirections(); request(); });
$('again').addEventListener('click', request);
document.addEventListener('dragover', (event) => { event.preventDefault(); document.body.classList.add('dragging'); });
document.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
document.addEventListener('drop', (event) => {
  event.preventDefault();
  document.body.classList.remove('dragging');
  choose(event.dataTransfer.files[0]);
});
