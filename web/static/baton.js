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

// A service's live output on one host. Lines are the service's own,
// untrusted: they go in as text, never as HTML. At most data-max-lines stay.
function followOutput(element) {
  const max = Number(element.dataset.maxLines) || 50;
  const source = new EventSource(element.dataset.logTail);
  // A reconnect starts again with the last lines: no duplicates.
  source.addEventListener("open", () => element.replaceChildren());
  source.addEventListener("line", (event) => {
    let line;
    try {
      line = JSON.parse(event.data);
    } catch {
      return;
    }
    const row = document.createElement("div");
    row.className = "log-line " + line.stream;
    // UTC with milliseconds, as every time the server renders.
    const time = new Date(line.time).toISOString().slice(11, 23);
    const stream = line.stream === "stderr" ? "err" : "out";
    row.textContent = `${time} [${line.generation} ${stream}] ${line.text}`;
    element.appendChild(row);
    while (element.childElementCount > max) element.firstElementChild.remove();
    element.scrollTop = element.scrollHeight;
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
  document.querySelectorAll("[data-log-tail]").forEach(followOutput);
  openDialogs();
});
