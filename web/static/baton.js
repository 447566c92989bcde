// The dashboard's only script. Pages work without it (forms post, pages
// reload); with it, live parts update themselves and the restart
// confirmation opens in a dialog instead of a separate page.
"use strict";

function followLive(element) {
  const source = new EventSource(element.dataset.live);
  const swap = (event) => {
    // Keep open <details> open across updates.
    const open = new Set(
      [...element.querySelectorAll("details[open]")].map((d, i) => i),
    );
    element.innerHTML = event.data;
    element.querySelectorAll("details").forEach((d, i) => {
      if (open.has(i)) d.open = true;
    });
    element.dispatchEvent(new CustomEvent("baton:updated", { bubbles: true }));
  };
  source.addEventListener("update", swap);
  source.addEventListener("done", (event) => {
    swap(event);
    // The restart has ended: nothing more will come, so do not reconnect.
    source.close();
    element.removeAttribute("data-live");
    element.dataset.finished = "true";
  });
}

function openDialogs() {
  for (const trigger of document.querySelectorAll("[data-dialog]")) {
    const dialog = document.getElementById(trigger.dataset.dialog);
    if (!dialog || typeof dialog.showModal !== "function") continue;
    trigger.addEventListener("click", (event) => {
      event.preventDefault();
      dialog.showModal();
      const field = dialog.querySelector("input:not([type=hidden])");
      if (field) field.focus();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach(followLive);
  openDialogs();
});
