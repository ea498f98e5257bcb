#!/usr/bin/perl
# SpamAssassin's Bayes tokens of each message file, as its Bayes plugin makes them: one line
# per token, "FILE<TAB>ID<TAB>TOKEN" (ID: the 40-bit id as hex). Used to check mxgate's
# SpamAssassin-compatible tokenizer (the one restored sa-learn databases are read with).
#
#   scripts/sa_bayes_tokens.pl FILE...
use strict;
use warnings;
use File::Temp qw(tempdir);
use Mail::SpamAssassin;

my $dir = tempdir(CLEANUP => 1);
my $sa = Mail::SpamAssassin->new({
    local_tests_only => 1, dont_copy_prefs => 1, userstate_dir => $dir,
    userprefs_filename => "$dir/user_prefs",
    post_config_text => "use_bayes 1\nbayes_path $dir/bayes\nbayes_auto_learn 0\n",
});
$sa->init(1);
my ($bayes) = grep { ref($_) eq 'Mail::SpamAssassin::Plugin::Bayes' } @{$sa->{plugins}->{plugins}};
die "no Bayes plugin\n" unless $bayes;
$bayes->learner_new() unless $bayes->{store};
binmode STDOUT;
for my $f (@ARGV) {
    open my $fh, '<:raw', $f or die "$f: $!";
    my $raw = do { local $/; <$fh> };
    my $msg = $sa->parse($raw);
    my $md = $bayes->get_body_from_msg($msg);
    my $toks = $bayes->tokenize($msg, $md);
    for my $id (sort keys %$toks) {
        my $t = $toks->{$id};
        $t =~ s/[\t\n\r]/ /g;
        print "$f\t", unpack("H*", $id), "\t$t\n";
    }
    $msg->finish();
}
