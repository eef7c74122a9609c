// The console: a hash router over four pages, and the API-key dialog.
import { onKeyNeeded, apiKey, setApiKey } from "./api.js";
import { clear, errorBox } from "./ui.js";
import { modelsPage } from "./models.js";
import { playgroundPage } from "./playground.js";
import { dataPage } from "./data.js";
import { jobsPage } from "./jobs.js";

const pages = { models: modelsPage, playground: playgroundPage, data: dataPage, jobs: jobsPage };
const main = document.getElementById("main");
let current = null; // the page's cleanup (timers, streams)

function askForKey(message) {
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  if (message) document.getElementById("key-message").textContent = message;
  input.value = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(input.value.trim()), { once: true });
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}
onKeyNeeded(askForKey);

document.getElementById("key-dialog").addEventListener("cancel", (e) => e.preventDefault());
const keyButton = document.getElementById("key-button");
keyButton.addEventListener("click", async () => {
  setApiKey(await askForKey("Enter the server's API key (kept in this tab only)."));
  route();
});

async function route() {
  if (typeof current === "function") current();
  current = null;
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  const [name, ...rest] = path.split("/");
  const page = pages[name] ? name : "models";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `pomar · ${page}`;
  clear(main);
  try {
    current = await pages[page](main, rest.map(decodeURIComponent));
  } catch (err) {
    main.append(errorBox(err));
  }
  keyButton.hidden = !apiKey();
}

window.addEventListener("hashchange", () => {
  route();
  main.focus({ preventScroll: true });
});
route();
