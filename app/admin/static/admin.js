// Optional: the copy buttons only appear when this runs; everything else works without JavaScript.
// (A file rather than inline script: the admin pages' Content-Security-Policy allows scripts from this site only.)
document.querySelectorAll("button.copy").forEach(function (button) {
  button.hidden = false;
  button.addEventListener("click", function () {
    var el = document.getElementById(button.dataset.copy);
    var text = "value" in el ? el.value : el.textContent;
    navigator.clipboard.writeText(text).then(function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 2000);
    });
  });
});
document.querySelectorAll("input[data-select-on-focus]").forEach(function (input) {
  input.addEventListener("focus", function () { input.select(); });
});
