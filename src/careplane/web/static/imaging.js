// The image viewer: shows one frame at a time through DICOMweb's rendered endpoint.
// Window/level by dragging (or typing), scrolling moves through the instances and frames of
// the selected series. No image data is decoded here: the server renders JPEGs.
document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("viewer");
  if (!root) return;
  const study = root.dataset.study;
  const image = document.getElementById("image");
  const position = document.getElementById("position");
  const wc = document.getElementById("wc");
  const ww = document.getElementById("ww");
  const lists = Array.from(root.querySelectorAll("ol.frames"));
  const buttons = Array.from(root.querySelectorAll("button.series"));
  let stack = [];
  let index = 0;
  let inverted = false;
  let timer = null;

  const load = (seriesIndex) => {
    const list = lists[seriesIndex];
    stack = [];
    list.querySelectorAll("li").forEach((li) => {
      const frames = parseInt(li.dataset.frames, 10) || 1;
      for (let f = 1; f <= frames; f++) stack.push({ series: list.dataset.series, instance: li.dataset.instance, frame: f });
    });
    buttons.forEach((b, i) => b.setAttribute("aria-pressed", i === seriesIndex ? "true" : "false"));
    index = 0;
    show();
  };

  const url = () => {
    const item = stack[index];
    const width = Math.max(256, Math.min(2048, Math.round(image.parentElement.clientWidth * (window.devicePixelRatio || 1))));
    const params = new URLSearchParams({ viewport: width + "," + width });
    if (wc.value !== "" && ww.value !== "" && parseFloat(ww.value) > 0) params.set("window", wc.value + "," + ww.value);
    return "/dicomweb/studies/" + study + "/series/" + item.series + "/instances/" + item.instance + "/frames/" + item.frame + "/rendered?" + params.toString();
  };

  const show = () => {
    if (!stack.length) return;
    position.textContent = (index + 1) + " / " + stack.length;
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => { image.src = url(); }, 40);
  };

  const step = (delta) => {
    if (!stack.length) return;
    index = Math.max(0, Math.min(stack.length - 1, index + delta));
    show();
  };

  buttons.forEach((b, i) => b.addEventListener("click", () => load(i)));
  root.querySelectorAll("[data-step]").forEach((b) => b.addEventListener("click", () => step(parseInt(b.dataset.step, 10))));
  image.addEventListener("wheel", (e) => { e.preventDefault(); step(e.deltaY > 0 ? 1 : -1); }, { passive: false });
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement) return;
    if (e.key === "ArrowDown" || e.key === "ArrowRight") step(1);
    if (e.key === "ArrowUp" || e.key === "ArrowLeft") step(-1);
  });
  [wc, ww].forEach((input) => input.addEventListener("change", show));
  document.getElementById("reset").addEventListener("click", () => { wc.value = ""; ww.value = ""; show(); });
  document.getElementById("invert").addEventListener("click", (e) => {
    inverted = !inverted;
    image.classList.toggle("inverted", inverted);
    e.currentTarget.setAttribute("aria-pressed", inverted ? "true" : "false");
  });

  // Dragging adjusts the window; starts from the image's own window when none is set yet.
  let drag = null;
  image.addEventListener("pointerdown", (e) => {
    image.setPointerCapture(e.pointerId);
    drag = { x: e.clientX, y: e.clientY, c: parseFloat(wc.value || "2048"), w: parseFloat(ww.value || "4096") };
  });
  image.addEventListener("pointermove", (e) => {
    if (!drag) return;
    const scale = Math.max(1, drag.w / 256);
    ww.value = Math.max(1, Math.round(drag.w + (e.clientX - drag.x) * scale));
    wc.value = Math.round(drag.c + (e.clientY - drag.y) * scale);
    show();
  });
  image.addEventListener("pointerup", () => { drag = null; });

  if (lists.length) load(0);
});
