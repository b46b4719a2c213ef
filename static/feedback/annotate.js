// Keyboard shortcuts of the annotation page. Each key submits one of the page's forms, so the
// keyboard path and the mouse path are the same server requests (and the same CSRF checks).
(function () {
  "use strict";
  let submitting = false;  // a held-down key must not send the same vote twice

  // True when the page has that form (a key of the other kind of item does nothing, and leaves
  // the browser's own use of the key, e.g. arrows scrolling, alone).
  function submit(formId, buttonId) {
    const form = document.getElementById(formId);
    if (!form) return false;
    if (submitting) return true;
    submitting = true;
    const button = buttonId ? document.getElementById(buttonId) : null;
    form.requestSubmit(button || undefined);
    return true;
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = event.target.matches("textarea, input, select");
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      return;  // letters typed into the comment box are text, not shortcuts
    }
    let handled;
    switch (event.key) {
      // An output to rate: thumbs.
      case "j": case "1": handled = submit("vote-form", "vote-up"); break;
      case "k": case "2": handled = submit("vote-form", "vote-down"); break;
      // "Which is better?": left / right / tie (keys that do not clash with the ones above).
      case "a": case "ArrowLeft": handled = submit("compare-form", "pick-left"); break;
      case "l": case "ArrowRight": handled = submit("compare-form", "pick-right"); break;
      case "t": case "=": handled = submit("compare-form", "pick-tie"); break;
      case "s": handled = submit("skip-form"); break;
      case "u": handled = submit("undo-form"); break;
      case "c": {
        const comment = document.getElementById("comment");
        if (comment) { event.preventDefault(); comment.focus(); }
        return;
      }
      default: return;
    }
    if (handled) event.preventDefault();
  });
  // The live character counter of the comment box, so the limit is visible before it is reached.
  const comment = document.getElementById("comment");
  const count = document.getElementById("comment-count");
  if (comment && count) {
    const max = Number(count.dataset.max);
    const update = function () {
      const n = comment.value.length;
      count.textContent = n + " / " + max + (n >= max ? " (limit reached)" : "");
      count.classList.toggle("over", n >= max * 0.9);
    };
    comment.addEventListener("input", update);
    update();
  }

  // Lets a person (and the browser tests) tell that the shortcuts are live.
  document.body.dataset.shortcuts = "ready";
})();
