// The patient chart refreshes its observations when the event stream announces a change to
// this patient's records (records.<Type>.changed with payload.patient == the chart's patient).
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-records-patient]").forEach((el) => {
    const patient = el.dataset.recordsPatient;
    const source = new EventSource("/api/events/stream?topic=records.");
    let pending = null;
    const changed = (evt) => {
      let payload = {};
      try { payload = JSON.parse(evt.data); } catch (e) { return; }
      if (payload.patient !== patient || pending) return;
      pending = setTimeout(() => { pending = null; htmx.trigger(el, "records:changed"); }, 150);
    };
    ["Observation", "Condition", "MedicationRequest", "AllergyIntolerance", "Encounter", "Patient"]
      .forEach((type) => source.addEventListener("records." + type + ".changed", changed));
  });
});
