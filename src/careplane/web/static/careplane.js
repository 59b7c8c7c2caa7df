// Live updates: an element with data-live-topic refreshes itself (via htmx) whenever the
// server-sent event stream announces a matching event. The browser's EventSource reconnects
// by itself and resumes from the last event id.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live-topic]").forEach((el) => {
    const source = new EventSource("/api/events/stream?topic=" + encodeURIComponent(el.dataset.liveTopic));
    let pending = null;
    source.onmessage = () => {};
    source.addEventListener("error", () => {});
    const refresh = () => {
      if (pending) return;
      pending = setTimeout(() => { pending = null; htmx.trigger(el, "careplane:event"); }, 200);
    };
    ["job.queued", "job.running", "job.succeeded", "job.failed", "job.cancelled"].forEach((t) => source.addEventListener(t, refresh));
  });
  document.body.addEventListener("htmx:afterRequest", (evt) => {
    if (evt.detail.elt.hasAttribute("data-reload") && evt.detail.successful) window.location.reload();
  });
});
